/**
 * Operating the event backbone.
 *   npm run events -- replay --consumer NAME --from-seq N      re-deliver from a stream sequence
 *   npm run events -- replay --consumer NAME --from-time ISO   re-deliver from a time (RFC 3339)
 *   npm run events -- lag --consumer NAME                       messages not yet acknowledged
 * The consumer's inbox makes a replay apply only the events whose effect is missing.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../lib/config.js';
import { rewindConsumer } from '../lib/consumer.js';
import { connectJetStream, connectNats } from '../lib/nats.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { consumer: { type: 'string' }, 'from-seq': { type: 'string' }, 'from-time': { type: 'string' } },
});
const config = loadConfig();
const [command] = positionals;

function fail(message: string): never {
  console.error(`events: ${message}`);
  process.exit(2);
}

const name = values.consumer ?? fail('--consumer NAME is required');
const nc = await connectNats(config, { name: 'events-cli' });
try {
  if (command === 'replay') {
    const seq = values['from-seq'];
    const time = values['from-time'];
    if ((seq === undefined) === (time === undefined)) fail('give exactly one of --from-seq N and --from-time ISO');
    let start: { sequence: number } | { time: Date };
    if (seq !== undefined) {
      if (!/^[1-9]\d*$/.test(seq)) fail(`--from-seq must be a positive integer, got ${JSON.stringify(seq)}`);
      start = { sequence: Number(seq) };
    } else {
      const at = new Date(time!);
      if (Number.isNaN(at.getTime())) fail(`--from-time must be an RFC 3339 time, got ${JSON.stringify(time)}`);
      start = { time: at };
    }
    await rewindConsumer(nc, config.EVENTS_STREAM, name, start);
    console.log(JSON.stringify({ consumer: name, stream: config.EVENTS_STREAM, replayFrom: 'sequence' in start ? start.sequence : start.time.toISOString() }));
  } else if (command === 'lag') {
    const { jsm } = await connectJetStream(nc);
    const info = await jsm.consumers.info(config.EVENTS_STREAM, name);
    console.log(JSON.stringify({ consumer: name, pending: info.num_pending, inHand: info.num_ack_pending, redelivered: info.num_redelivered }));
  } else {
    fail('usage: npm run events -- replay|lag --consumer NAME [--from-seq N | --from-time ISO]');
  }
} finally {
  await nc.close();
}
