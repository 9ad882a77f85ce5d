import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { callUnary } from '../../lib/grpc.js';
import { freePort } from '../../test/ledger-process.js';
import { TestNatsServer } from '../../test/nats-server.js';
import { derivedId } from '../../lib/derived-id.js';
import { createLogger } from '../../lib/logger.js';
import { connectJetStream, connectNats } from '../../lib/nats.js';
import { ensureEventStream } from '../../lib/streams.js';
import { EventBatch } from '../../proto/gen/events/v1/events.js';
import { Decision, RiskServiceClient, type ScoreRequest } from '../../proto/gen/risk/v1/risk.js';
import { testConfig, testPool } from '../../test/support.js';
import { startRisk } from '../app.js';
import { RiskClient } from '../client.js';
import { FeatureCheckpoints } from './feature-checkpoints.js';
import { FeatureStore, offlineFeatures } from './features.js';
import { loadModel } from './models.js';
import { buildDataset, synthScoreRequest, timeSplit, trainModels, type ModelArtefact } from './pipeline.js';
import { ModelScorer, PaymentFeatureFeed, factsFromScore } from './serving.js';
import { DEFAULT_SYNTH, type SynthPayment } from './synth.js';

const SYNTH = { ...DEFAULT_SYNTH, seed: 21, weeks: 3, customers: 600, fraudIncidentsPerDay: 0.6 };
const uuid = (id: string) => derivedId('synthetic', id);

/** A synthetic payment as the payment service's Score request, with UUID ids as in production. */
const request = (p: SynthPayment): ScoreRequest => synthScoreRequest(p, uuid);

describe('risk model serving: online features fed from payment events on JetStream', function () {
  this.timeout(120_000);
  const suffix = randomUUID().slice(0, 8);
  const config = testConfig({ EVENTS_STREAM: `RISK_TEST_${suffix}`, EVENTS_SUBJECT_PREFIX: `risktest-${suffix}` });
  let artefact: ModelArtefact;
  let modelFile: string;
  let challengerFile: string;
  let log: SynthPayment[];
  const base = Date.now() - 3 * 86_400_000;

  before(async () => {
    const dataset = buildDataset(SYNTH);
    const [logistic, trees] = await trainModels(dataset, timeSplit(dataset, 2), SYNTH);
    artefact = logistic!;
    const dir = await mkdtemp(path.join(os.tmpdir(), 'risk-model-'));
    modelFile = path.join(dir, 'model.json');
    challengerFile = path.join(dir, 'challenger.json');
    await writeFile(modelFile, JSON.stringify(artefact));
    await writeFile(challengerFile, JSON.stringify(trees));
    // The last day of the log, as payment events (authorized or declined) in one stream, in time order.
    log = dataset.payments.filter((p) => p.at >= (SYNTH.weeks * 7 - 1) * 86_400_000).slice(0, 1_500);
    await publishPayments(log);
  });

  /** Payments as payment events on the stream (authorized or declined, then captured), in order, 100 a message. */
  async function publishPayments(payments: readonly SynthPayment[]): Promise<void> {
    const nc = await connectNats(config, { name: 'risk-test' });
    const { js, jsm } = await connectJetStream(nc);
    await ensureEventStream(jsm, config);
    for (let i = 0; i < payments.length; i += 100) {
      const events = payments.slice(i, i + 100).map((p, k) => ({
        eventId: randomUUID(),
        type: p.fraud && k % 2 === 0 ? 'payment.declined' : 'payment.authorized',
        aggregateId: uuid(p.id),
        sequence: 1n,
        occurredAt: BigInt(base + p.at) * 1_000_000n,
        traceparent: '',
        payload: {
          $case: 'payment' as const,
          value: {
            paymentId: uuid(p.id), merchantId: uuid(p.merchantId), currency: 'USD', amount: BigInt(p.amount), amountCaptured: 0n, amountRefunded: 0n, fee: 0n,
            status: 'succeeded', operationId: '', operationAmount: 0n, operationFee: 0n, declineCode: '', sourceAccountId: '', destinationAccountId: '',
            customerId: p.customerId, riskScorePpm: 0, riskModelVersion: '', cardFingerprint: p.cardFingerprint, cardCountry: p.cardCountry,
            cardType: p.cardType, deviceId: p.deviceId, ipCountry: p.ipCountry, merchantCategory: p.merchantCategory, createdAt: BigInt(base + p.at) * 1_000_000n, feeTransferId: '', sourceType: 'card',
          },
        },
      }));
      await js.publish(`${config.EVENTS_SUBJECT_PREFIX}.payments.0`, EventBatch.encode({ batchId: randomUUID(), shard: 0, events }).finish());
      // A captured event of the same payment must not count it twice.
      await js.publish(`${config.EVENTS_SUBJECT_PREFIX}.payments.0`, EventBatch.encode({ batchId: randomUUID(), shard: 0, events: events.map((e) => ({ ...e, type: 'payment.captured' })) }).finish());
    }
    await nc.close();
  }

  it('with a challenger in shadow, Score answers the champion and publishes risk.decision events with both scores', async () => {
    const app = await startRisk({ ...config, RISK_GRPC_LISTEN: '127.0.0.1:0', RISK_MODEL_PATH: modelFile, RISK_CHALLENGER_MODEL_PATH: challengerFile, RISK_CHALLENGER_MODE: 'shadow' }, createLogger('risk-test', 'silent'));
    const client = new RiskClient(app.address);
    const nc = await connectNats(config, { name: 'risk-test-decisions' });
    const received = nc.subscribe(`${config.EVENTS_SUBJECT_PREFIX}.risk.decisions`, { max: 1 });
    try {
      const answer = await client.score(request(log[2]!), 2_000);
      assert.equal(answer.modelVersion, artefact.version);
      for await (const m of received) {
        const e = EventBatch.decode(m.data).events[0]!;
        assert.equal(e.payload?.$case, 'riskDecision');
        if (e.payload?.$case === 'riskDecision') {
          assert.deepEqual([e.payload.value.variant, e.payload.value.mode, e.payload.value.championVersion, e.payload.value.championScorePpm], ['champion', 'shadow', artefact.version, answer.scorePpm]);
          assert.match(e.payload.value.challengerVersion, /^gbt-/);
        }
      }
    } finally {
      await nc.close();
      client.close();
      await app.close();
    }
  });

  it('with the rules as champion and a model in shadow, risk_score_psi compares the rules\' scores with no model\'s training scores', async () => {
    const port = await freePort();
    const app = await startRisk({ ...config, RISK_GRPC_LISTEN: '127.0.0.1:0', METRICS_PORT: port, RISK_CHALLENGER_MODEL_PATH: modelFile, RISK_CHALLENGER_MODE: 'shadow' }, createLogger('risk-test', 'silent'));
    const raw = new RiskServiceClient(app.address, credentials.createInsecure());
    try {
      // Two windows of 5,000 ordinary payments: the rules answer the same scores throughout (no drift).
      const requests = Array.from({ length: 1_000 }, (_, i) => ({ ...request(log[i % log.length]!), cardFingerprint: '', deviceId: '', customerId: '' }));
      for (let i = 0; i < 10; i++) {
        const { responses } = await callUnary(raw, raw.scoreBatch, { requests }, 10_000);
        assert.ok(responses.every((r) => r.modelVersion === 'rules-v1'));
      }
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const psi = Number(/^risk_score_psi(?:\{[^}]*\})? (\S+)$/m.exec(text)?.[1]);
      assert.ok(psi < 0.1, `risk_score_psi ${psi} for the rules' unchanged scores`);
    } finally {
      raw.close();
      await app.close();
    }
  });

  after(async () => {
    const nc = await connectNats(config, { name: 'risk-test-cleanup' });
    await (await connectJetStream(nc)).jsm.streams.delete(config.EVENTS_STREAM).catch(() => undefined);
    await nc.close();
  });

  it('a score served from the event-fed store equals the offline computation over the same log', async () => {
    const store = new FeatureStore();
    const feed = new PaymentFeatureFeed(store, config, createLogger('risk-test', 'silent'));
    await feed.start();
    try {
      for (let waited = 0; feed.applied < log.length && waited < 200; waited++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(feed.applied, log.length, 'every authorized or declined payment observed once');
      const model = await loadModel(artefact.parameters);
      const scorer = new ModelScorer(model, store, artefact.version, artefact.threshold);
      const next = log[log.length - 1]!;
      const at = base + next.at + 30_000;
      const served = scorer.score(request(next), at);
      // Offline: the same facts, replayed, then the features of the request at the same time.
      const facts = log.map((p) => factsFromScore(request(p), base + p.at));
      const offline = offlineFeatures([...facts, factsFromScore(request(next), at)]);
      const expected = model.score(offline[offline.length - 1]!);
      assert.equal(served.scorePpm, Math.round(expected * 1_000_000));
      assert.equal(served.modelVersion, artefact.version);
    } finally {
      await feed.stop();
    }
  });

  it('the store is checkpointed to PostgreSQL; a new instance restores it and reads the stream only after it', async () => {
    const pool = testPool();
    const checkpoints = new FeatureCheckpoints(pool, `${config.EVENTS_STREAM}:checkpoint-test-${randomUUID()}`);
    const logger = createLogger('risk-test', 'silent');
    const waitFor = async (feed: PaymentFeatureFeed, n: number) => {
      for (let waited = 0; feed.applied < n && waited < 200; waited++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(feed.applied, n);
    };
    try {
      const first = new PaymentFeatureFeed(new FeatureStore(), config, logger, checkpoints);
      await first.start();
      await waitFor(first, log.length);
      await first.stop(); // the last checkpoint
      const saved = await checkpoints.load();
      assert.equal(saved?.seq, first.lastSeq);
      assert.ok(first.lastSeq > 0);

      // A new instance: its store comes from the checkpoint, not from the stream (nothing is read again) ...
      const store = new FeatureStore();
      const second = new PaymentFeatureFeed(store, config, logger, checkpoints);
      await second.start();
      try {
        assert.equal(second.lastSeq, first.lastSeq);
        const more = log.slice(0, 200).map((p, i) => ({ ...p, id: `${p.id}-again-${i}`, at: log[log.length - 1]!.at + 1_000 + i }));
        await publishPayments(more);
        // ... and only the events after it are applied: the 200 new payments, not the 1,500 before them again.
        await waitFor(second, more.length);
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(second.applied, more.length);
        // The restored-then-fed store equals a replay of everything.
        const next = more[more.length - 1]!;
        const at = base + next.at + 5_000;
        const facts = [...log, ...more].map((p) => factsFromScore(request(p), base + p.at));
        const offline = offlineFeatures([...facts, factsFromScore(request(next), at)]);
        assert.deepEqual(store.features(factsFromScore(request(next), at)), offline[offline.length - 1]);
      } finally {
        await second.stop();
      }
      assert.equal((await checkpoints.load())?.seq, second.lastSeq, 'the later checkpoint replaced the earlier');
      assert.equal(await checkpoints.save({ seq: first.lastSeq, streamCreated: saved!.streamCreated, snapshot: new FeatureStore().snapshot() }), false, 'an older checkpoint never replaces a later one');
    } finally {
      await pool.end();
    }
  });

  it('refuses to start on a broken artefact (another feature order, weights too short, no threshold) rather than serve it', async () => {
    const params = artefact.parameters as Extract<ModelArtefact['parameters'], { kind: 'logistic' }>;
    const broken: [string, unknown][] = [
      // An older build's order: each input would meet another input's weight.
      ['features', { ...artefact, features: [...artefact.features].reverse() }],
      // Every score NaN: compared false with the threshold, every payment approved.
      ['parameters.weights', { ...artefact, parameters: { ...params, weights: params.weights.slice(0, 10) } }],
      // JSON writes NaN and Infinity as null, and a null threshold declines every payment.
      ['threshold', { ...artefact, threshold: null }],
    ];
    const dir = await mkdtemp(path.join(os.tmpdir(), 'risk-broken-'));
    for (const [problem, content] of broken) {
      const file = path.join(dir, `${problem}.json`);
      await writeFile(file, JSON.stringify(content));
      const outcome = await startRisk({ ...config, RISK_GRPC_LISTEN: '127.0.0.1:0', RISK_MODEL_PATH: file }, createLogger('risk-test', 'silent')).then(
        async (app) => {
          await app.close();
          return 'served';
        },
        (error: Error) => error.message,
      );
      assert.ok(outcome.includes(problem) && outcome.includes(file), `${problem}: ${outcome}`);
    }
  });

  it('Score serves the model from RISK_MODEL_PATH, and a risky request scores above an ordinary one', async () => {
    const app = await startRisk({ ...config, RISK_GRPC_LISTEN: '127.0.0.1:0', RISK_MODEL_PATH: modelFile }, createLogger('risk-test', 'silent'));
    const client = new RiskClient(app.address);
    try {
      const ordinary = await client.score(request({ ...log[0]!, at: 0 }), 2_000);
      assert.equal(ordinary.modelVersion, artefact.version);
      // Score observes nothing itself (the events do): a new prepaid card abroad on a new device, large amount.
      const risky = await client.score({ ...request(log[1]!), cardFingerprint: `fp_test_${suffix}`, cardType: 'prepaid', amount: 900_000n, ipCountry: 'RU', cardCountry: 'US', deviceId: `dev_${suffix}`, merchantCategory: 'gift_cards' }, 2_000);
      assert.ok(risky.scorePpm > ordinary.scorePpm, `${risky.scorePpm} vs ${ordinary.scorePpm}`);
      assert.notEqual(risky.decision, Decision.DECISION_UNSPECIFIED);
    } finally {
      client.close();
      await app.close();
    }
  });
});

/** One payment.authorized event of `paymentId` (a card and device of the test), as the relay publishes it. */
function paymentMessage(merchantId: string, paymentId: string, at: number): Uint8Array {
  return EventBatch.encode({
    batchId: randomUUID(),
    shard: 0,
    events: [
      {
        eventId: derivedId('event', paymentId),
        type: 'payment.authorized',
        aggregateId: paymentId,
        sequence: 1n,
        occurredAt: BigInt(at) * 1_000_000n,
        traceparent: '',
        payload: {
          $case: 'payment',
          value: {
            paymentId, merchantId, currency: 'USD', amount: 1_000n, amountCaptured: 0n, amountRefunded: 0n, fee: 0n,
            status: 'requires_capture', operationId: '', operationAmount: 0n, operationFee: 0n, declineCode: '', sourceAccountId: '', destinationAccountId: '',
            customerId: 'cust', riskScorePpm: 0, riskModelVersion: '', cardFingerprint: 'card-dup', cardCountry: 'US',
            cardType: 'debit', deviceId: 'dev-dup', ipCountry: 'US', merchantCategory: 'general', createdAt: BigInt(at) * 1_000_000n, feeTransferId: '', sourceType: 'card',
          },
        },
      },
    ],
  }).finish();
}

describe('risk feature feed: delivery', function () {
  this.timeout(60_000);
  const suffix = randomUUID().slice(0, 8);
  const config = testConfig({ EVENTS_STREAM: `RISK_TEST_DUP_${suffix}`, EVENTS_SUBJECT_PREFIX: `risktest-dup-${suffix}` });
  const subject = `${config.EVENTS_SUBJECT_PREFIX}.payments.0`;

  after(async () => {
    const nc = await connectNats(config, { name: 'risk-test-cleanup' });
    await (await connectJetStream(nc)).jsm.streams.delete(config.EVENTS_STREAM).catch(() => undefined);
    await nc.close();
  });

  /** Runs `work` with JetStream on the suite's stream (made if absent), then closes the connection. */
  async function onStream<T>(work: (jet: Awaited<ReturnType<typeof connectJetStream>>) => Promise<T>): Promise<T> {
    const nc = await connectNats(config, { name: 'risk-test' });
    try {
      const jet = await connectJetStream(nc);
      await ensureEventStream(jet.jsm, config);
      return await work(jet);
    } finally {
      await nc.close();
    }
  }

  it('a payment event published again counts the payment once (at least once delivery: the relay publishes again after the duplicate window)', async () => {
    const now = Date.now();
    const merchantId = randomUUID();
    await onStream(async ({ js }) => {
      const payments = [randomUUID(), randomUUID(), randomUUID()];
      for (const [i, id] of payments.entries()) await js.publish(subject, paymentMessage(merchantId, id, now - 10_000 + i));
      // The first payment's message again, as a relay that lost the acknowledgement republishes it later.
      await js.publish(subject, paymentMessage(merchantId, payments[0]!, now - 10_000));
    });

    const store = new FeatureStore();
    const feed = new PaymentFeatureFeed(store, config, createLogger('risk-test', 'silent'));
    await feed.start();
    try {
      for (let waited = 0; feed.lastSeq < 4 && waited < 200; waited++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(feed.lastSeq, 4);
      const v = store.features({ at: now, merchantId, merchantCategory: 'general', customerId: `${merchantId}:cust`, cardFingerprint: 'card-dup', cardType: 'debit', cardCountry: 'US', deviceId: 'dev-dup', ipCountry: 'US', amount: 1_000 });
      assert.deepEqual([feed.applied, v[1], v[5], v[9], v[12]], [3, 3, 3, 3, 3], 'payments applied, card 1m, customer 1h, device 1h, merchant 1h');
    } finally {
      await feed.stop();
    }
  });

  it('NATS back with an empty store (the stream created again by the relay): the feed reads the new stream from its start', async () => {
    const nats = await TestNatsServer.start();
    const own = { ...config, NATS_URL: nats.url };
    const publish = async (count: number) => {
      const nc = await connectNats(own, { name: 'risk-test' });
      try {
        const { js, jsm } = await connectJetStream(nc);
        await ensureEventStream(jsm, own);
        for (let i = 0; i < count; i++) await js.publish(subject, paymentMessage(randomUUID(), randomUUID(), Date.now()));
      } finally {
        await nc.close();
      }
    };
    const feed = new PaymentFeatureFeed(new FeatureStore(), own, createLogger('risk-test', 'silent'));
    try {
      await publish(20);
      await feed.start();
      assert.equal(feed.applied, 20);
      // A NATS node replaced, or its volume lost: the server returns without the stream; the relay creates it again
      // and publishes the next payments, at stream sequences from 1 again.
      await nats.stop();
      rmSync(nats.storeDir, { recursive: true, force: true });
      mkdirSync(nats.storeDir);
      await nats.restart();
      await publish(5);
      for (let waited = 0; feed.applied < 25 && waited < 600; waited++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(feed.applied, 25, 'the payments of the new stream observed');
    } finally {
      await feed.stop();
      await nats.stop();
    }
  });

  it('restarted after NATS came back without its store: the checkpoint restored, the new stream read from its start, and checkpointed again', async () => {
    const nats = await TestNatsServer.start();
    const own = { ...config, NATS_URL: nats.url };
    const pool = testPool();
    const checkpoints = new FeatureCheckpoints(pool, `${own.EVENTS_STREAM}:restart-test-${randomUUID()}`);
    const logger = createLogger('risk-test', 'silent');
    const merchantId = randomUUID();
    const publish = async (count: number) => {
      const nc = await connectNats(own, { name: 'risk-test' });
      try {
        const { js, jsm } = await connectJetStream(nc);
        await ensureEventStream(jsm, own);
        for (let i = 0; i < count; i++) await js.publish(subject, paymentMessage(merchantId, randomUUID(), Date.now()));
      } finally {
        await nc.close();
      }
    };
    try {
      await publish(20);
      const first = new PaymentFeatureFeed(new FeatureStore(), own, logger, checkpoints);
      await first.start();
      await first.stop(); // checkpointed at the old stream's sequence 20
      assert.equal((await checkpoints.load())?.seq, 20);
      // While no instance runs, NATS returns without its store; the relay creates the stream again and publishes
      // the next payments at sequences 1 to 5: below the checkpoint's 20.
      await nats.stop();
      rmSync(nats.storeDir, { recursive: true, force: true });
      mkdirSync(nats.storeDir);
      await nats.restart();
      await publish(5);
      const store = new FeatureStore();
      const second = new PaymentFeatureFeed(store, own, logger, checkpoints);
      await second.start();
      await second.stop();
      const v = store.features({ at: Date.now(), merchantId, merchantCategory: 'general', customerId: '', cardFingerprint: 'none', cardType: 'debit', cardCountry: 'US', deviceId: 'none', ipCountry: 'US', amount: 1_000 });
      assert.deepEqual([second.applied, v[12]], [5, 25], 'the new stream\'s payments applied, on top of the restored history (merchant 1h)');
      const saved = await checkpoints.load();
      assert.equal(saved?.seq, 5, 'the new stream\'s checkpoint replaced the old stream\'s later-numbered one');
      await publish(2);
      const third = new PaymentFeatureFeed(new FeatureStore(), own, logger, checkpoints);
      await third.start();
      await third.stop();
      assert.equal(third.applied, 2, 'a restart on the same stream resumes after its checkpoint');
    } finally {
      await pool.end();
      await nats.stop();
    }
  });

  it('start() returns once the feed has caught up with the stream: Score never serves a store still replaying', async () => {
    const now = Date.now();
    const merchantId = randomUUID();
    const before = await onStream(async ({ js, jsm }) => {
      const messages = (await jsm.streams.info(config.EVENTS_STREAM)).state.messages;
      await Promise.all(Array.from({ length: 2_000 }, (_, i) => js.publish(subject, paymentMessage(merchantId, randomUUID(), now - 60_000 + i))));
      // Another subject last in the stream: what the feed does not read must not keep it waiting.
      await js.publish(`${config.EVENTS_SUBJECT_PREFIX}.risk.decisions`, new Uint8Array());
      return messages;
    });

    const feed = new PaymentFeatureFeed(new FeatureStore(), config, createLogger('risk-test', 'silent'));
    await feed.start();
    try {
      assert.equal(feed.lastSeq, before + 2_000, 'every payment message of the stream applied when start() returns');
    } finally {
      await feed.stop();
    }
  });
});
