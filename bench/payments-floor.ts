/**
 * The floor: the least a card payment with automatic capture can cost on this machine, for bench/payments.ts to
 * measure beside the real stack in the same run (as bench/run.ts measures the ledger beside its raw write limit).
 * No ledger logic and no checks beyond the request's schema. A rules-only risk score (an amount limit and a
 * velocity count per card, in memory) decides each payment; then, per group of concurrent requests (one per
 * event-loop turn), one SERIALIZABLE statement writes the Idempotency-Key record, each payment in its final state,
 * its two transfers, what the group adds to the three accounts' balances (appended, not updated: none of them has
 * a limit to check, and a write that reads nothing never conflicts) and one outbox row with the group's events. A
 * relay publishes the outbox to JetStream and deletes it. Keys are written, never looked up first: the benchmark's
 * are all distinct (a repeat would fail its group).
 *
 * One entry, three roles (FLOOR_ROLE), each a process of its own when bench/payments.ts starts them as the issue
 * lays the system out:
 *   - gateway: POST /v1/payments with the real gateway's body schema and payment view, on FLOOR_HTTP_PORT. With
 *     FLOOR_PAYMENTS_TARGET it sends each group as one CreatePayments call to the payments role; without it, it
 *     scores and writes the group itself (the floor of one process: what the process boundaries cost).
 *   - payments: PaymentService.CreatePayments on FLOOR_GRPC_PORT, scoring each group with one ScoreBatch call to
 *     the risk role at FLOOR_RISK_TARGET, and the outbox relay.
 *   - risk: RiskService.ScoreBatch on FLOOR_GRPC_PORT.
 * The tables are the real ones' copies (columns, indexes, checks) in the schema bench_floor, which bench/payments.ts
 * makes before and drops after (createFloorTables, dropFloorTables).
 */
import { randomUUID } from 'node:crypto';
import { Server, ServerCredentials, credentials, status, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import Fastify from 'fastify';
import type { Pool } from 'pg';
import { Coalescer } from '../lib/coalesce.js';
import { loadConfig, type Config } from '../lib/config.js';
import { createPool, statement } from '../lib/db.js';
import { callUnary } from '../lib/grpc.js';
import { connectJetStream, connectNats } from '../lib/nats.js';
import { paymentView } from '../gateway/views.js';
import { PaymentBody } from '../gateway/schemas.js';
import {
  CaptureMethod,
  PaymentServiceClient,
  PaymentServiceService,
  PaymentStatus,
  RiskOutcome,
  type CreatePaymentOutcome,
  type CreatePaymentRequest,
  type CreatePaymentsRequest,
  type CreatePaymentsResponse,
  type Payment,
} from '../proto/gen/payments/v1/payments.js';
import { Decision, RiskServiceClient, RiskServiceService, type ScoreBatchRequest, type ScoreBatchResponse, type ScoreRequest, type ScoreResponse } from '../proto/gen/risk/v1/risk.js';

export const FLOOR_SCHEMA = 'bench_floor';
export const FLOOR_STREAM = 'BENCH_FLOOR_EVENTS';
const FLOOR_SUBJECT = 'benchfloor';
const CARD_CLEARING = '00000000-0000-4000-8000-000000000001';
const MERCHANT_BALANCE = '00000000-0000-4000-8000-000000000002';
const FEE_REVENUE = '00000000-0000-4000-8000-000000000003';
/** Groups written at once. */
const GROUPS_IN_FLIGHT = 4;
const FEE_BPS = 290n;
const AMOUNT_LIMIT = 1_000_000n;
const VELOCITY_LIMIT = 20;
const DEADLINE_MS = 5_000;

/** The floor's tables: copies of the real ones, and the balances' appended deltas. */
export async function createFloorTables(pool: Pool): Promise<void> {
  await pool.query(`DROP SCHEMA IF EXISTS ${FLOOR_SCHEMA} CASCADE`);
  await pool.query(`CREATE SCHEMA ${FLOOR_SCHEMA}`);
  for (const table of ['payments', 'idempotency_keys', 'transfers', 'outbox']) {
    await pool.query(`CREATE TABLE ${FLOOR_SCHEMA}.${table} (LIKE public.${table} INCLUDING ALL)`);
  }
  await pool.query(`CREATE TABLE ${FLOOR_SCHEMA}.balance_deltas (account_id uuid, group_id uuid, debits_posted int8 NOT NULL, credits_posted int8 NOT NULL, PRIMARY KEY (account_id, group_id))`);
}

/** Payment events written and not yet published: the relay keeping up is part of the floor's cost. */
export async function floorEventsUnpublished(pool: Pool): Promise<number> {
  const { rows } = await pool.query<{ events: number }>(`SELECT coalesce(sum(event_count), 0)::int AS events FROM ${FLOOR_SCHEMA}.outbox`);
  return rows[0]!.events;
}

export async function dropFloorTables(pool: Pool): Promise<void> {
  await pool.query(`DROP SCHEMA IF EXISTS ${FLOOR_SCHEMA} CASCADE`);
}

/** The rules-only score: an amount limit, and a count of payments per card in this process's memory. */
class FloorRisk {
  private readonly seen = new Map<string, number>();

  score(requests: ScoreRequest[]): ScoreResponse[] {
    return requests.map((r) => {
      const count = (this.seen.get(r.cardFingerprint) ?? 0) + 1;
      this.seen.set(r.cardFingerprint, count);
      if (this.seen.size > 1_000_000) this.seen.clear();
      const reasons = [...(r.amount > AMOUNT_LIMIT ? ['amount_limit'] : []), ...(count > VELOCITY_LIMIT ? ['velocity'] : [])];
      return { scorePpm: reasons.length > 0 ? 990_000 : 10_000, decision: reasons.length > 0 ? Decision.DECISION_DECLINE : Decision.DECISION_APPROVE, reasons, modelVersion: 'floor-rules' };
    });
  }
}

function scoreRequest(r: CreatePaymentRequest): ScoreRequest {
  const card = r.source?.kind?.$case === 'card' ? r.source.kind.value : undefined;
  return { paymentId: '', merchantId: r.merchantId, customerId: r.customerId, amount: r.amount, currency: r.currency, cardFingerprint: card?.fingerprint ?? '', deviceId: r.deviceId, cardCountry: card?.country ?? '', ipCountry: r.ipCountry, cardType: card?.type ?? '', merchantCategory: '' };
}

/** Writes one group of scored payments in one transaction of one statement; answers the payments as written. */
class FloorWriter {
  private lastSequence = 0n;

  constructor(private readonly pool: Pool) {}

  async write(requests: CreatePaymentRequest[], scores: ScoreResponse[]): Promise<Payment[]> {
    const createdAt = BigInt(Date.now()) * 1_000_000n;
    const payments = requests.map((r, i): Payment => {
      const approved = scores[i]!.decision === Decision.DECISION_APPROVE;
      return {
        id: randomUUID(),
        merchantId: r.merchantId,
        amount: r.amount,
        currency: r.currency,
        amountCaptured: approved ? r.amount : 0n,
        amountRefunded: 0n,
        status: approved ? PaymentStatus.PAYMENT_STATUS_SUCCEEDED : PaymentStatus.PAYMENT_STATUS_DECLINED,
        declineCode: approved ? '' : 'risk_declined',
        declineReason: approved ? '' : scores[i]!.reasons.join(', '),
        createdAt,
        captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC,
        source: r.source,
        destinationAccountId: MERCHANT_BALANCE,
        fee: approved ? (r.amount * FEE_BPS) / 10_000n : 0n,
        risk: { outcome: RiskOutcome.RISK_OUTCOME_SCORED, scorePpm: scores[i]!.scorePpm, decision: approved ? 'approve' : 'decline', reasons: scores[i]!.reasons, modelVersion: scores[i]!.modelVersion },
        metadata: r.metadata,
        customerId: r.customerId,
      };
    });
    const captured = payments.filter((p) => p.amountCaptured > 0n);
    const total = captured.reduce((sum, p) => sum + p.amountCaptured, 0n);
    const fees = captured.reduce((sum, p) => sum + p.fee, 0n);
    this.lastSequence = BigInt(Date.now()) * 1000n > this.lastSequence ? BigInt(Date.now()) * 1000n : this.lastSequence + 1n;
    const events = JSON.stringify(payments.map((p) => ({ type: p.amountCaptured > 0n ? 'payment.captured' : 'payment.declined', id: p.id, amount: String(p.amount) })));
    await statement(this.pool, {
      text: `WITH keys AS (
         INSERT INTO ${FLOOR_SCHEMA}.idempotency_keys (merchant_id, key, fingerprint, state, status, body, locked_at)
         SELECT m, k, 'floor', 'done', 201, id::text, now() FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS v(m, k, id)),
       payments AS (
         INSERT INTO ${FLOOR_SCHEMA}.payments (id, merchant_id, idempotency_key, amount, currency, capture_method, source_kind,
           source_account_id, card_fingerprint, destination_account_id, status, amount_captured, fee_bps, fee, risk_outcome,
           risk_score_ppm, risk_decision, risk_reasons, risk_model_version, metadata, created_at)
         SELECT id, m, k, a, c, 'automatic', 'card', '${CARD_CLEARING}', fp, '${MERCHANT_BALANCE}', s, captured, ${FEE_BPS}, fee,
           'scored', score, decision, '[]', 'floor-rules', '{}', $4
         FROM unnest($3::uuid[], $1::uuid[], $2::text[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int4[], $12::text[])
           AS v(id, m, k, a, c, fp, s, captured, fee, score, decision)),
       transfers AS (
         INSERT INTO ${FLOOR_SCHEMA}.transfers (id, debit_account_id, credit_account_id, amount, ledger, code, flags, "timestamp", shard)
         SELECT gen_random_uuid(), '${CARD_CLEARING}'::uuid, '${MERCHANT_BALANCE}'::uuid, captured, 840, 1, 1, $4 + 2 * n, 0
           FROM unnest($9::int8[]) WITH ORDINALITY AS v(captured, n) WHERE captured > 0
         UNION ALL
         SELECT gen_random_uuid(), '${MERCHANT_BALANCE}'::uuid, '${FEE_REVENUE}'::uuid, fee, 840, 2, 0, $4 + 2 * n + 1, 0
           FROM unnest($10::int8[]) WITH ORDINALITY AS v(fee, n) WHERE fee > 0),
       outbox AS (
         INSERT INTO ${FLOOR_SCHEMA}.outbox (shard, sequence, batch_id, part, event_count, payload)
         VALUES (0, $14, $13, 0, cardinality($3::uuid[]), convert_to($15, 'UTF8')))
       INSERT INTO ${FLOOR_SCHEMA}.balance_deltas (account_id, group_id, debits_posted, credits_posted)
       SELECT account_id, $13, d, c FROM (VALUES ('${CARD_CLEARING}'::uuid, $16::int8, 0::int8), ('${MERCHANT_BALANCE}'::uuid, $17::int8, $16::int8), ('${FEE_REVENUE}'::uuid, 0::int8, $17::int8)) AS v(account_id, d, c)`,
      values: [
        requests.map((r) => r.merchantId),
        requests.map((r) => r.idempotencyKey),
        payments.map((p) => p.id),
        createdAt,
        payments.map((p) => p.amount),
        payments.map((p) => p.currency),
        payments.map((p) => (p.source?.kind?.$case === 'card' ? p.source.kind.value.fingerprint : '')),
        payments.map((p) => (p.amountCaptured > 0n ? 'succeeded' : 'declined')),
        payments.map((p) => p.amountCaptured),
        payments.map((p) => p.fee),
        payments.map((p) => p.risk!.scorePpm),
        payments.map((p) => p.risk!.decision),
        randomUUID(),
        this.lastSequence,
        events,
        total,
        fees,
      ],
    });
    return payments;
  }
}

/**
 * Publishes the outbox to JetStream and deletes what was acknowledged, a round at a time, on a REPEATABLE READ
 * session of its own as the ledger's relay (at SERIALIZABLE its reads abort the groups' inserts).
 */
async function relay(config: Config): Promise<never> {
  const pool = createPool(config, { max: 1, applicationName: 'bench-floor-relay', isolation: 'repeatable read' });
  const nc = await connectNats(config, { name: 'bench-floor-relay' });
  const { js, jsm } = await connectJetStream(nc);
  await jsm.streams.add({ name: FLOOR_STREAM, subjects: [`${FLOOR_SUBJECT}.>`] });
  for (;;) {
    const { rows } = await pool.query<{ shard: number; sequence: string; payload: Buffer }>(`SELECT shard, sequence, payload FROM ${FLOOR_SCHEMA}.outbox ORDER BY shard, sequence LIMIT 500`);
    if (rows.length === 0) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      continue;
    }
    await Promise.all(rows.map((r) => js.publish(`${FLOOR_SUBJECT}.payments`, r.payload, { msgID: `${r.shard}:${r.sequence}` })));
    await pool.query(`DELETE FROM ${FLOOR_SCHEMA}.outbox WHERE (shard, sequence) IN (SELECT * FROM unnest($1::int4[], $2::int8[]))`, [rows.map((r) => r.shard), rows.map((r) => r.sequence)]);
  }
}

function grpcServer(port: number, add: (server: Server) => void): Promise<Server> {
  const server = new Server();
  add(server);
  return new Promise((resolve, reject) => server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve(server))));
}

async function runRole(role: string): Promise<void> {
  const config = loadConfig();
  // Stopped once the measured run is over: what is still in flight does not matter.
  process.once('SIGTERM', () => process.exit(0));
  const grpcPort = Number(process.env['FLOOR_GRPC_PORT']);
  if (role === 'risk') {
    const risk = new FloorRisk();
    await grpcServer(grpcPort, (s) =>
      s.addService(RiskServiceService, {
        scoreBatch: (call: ServerUnaryCall<ScoreBatchRequest, ScoreBatchResponse>, done: sendUnaryData<ScoreBatchResponse>) => done(null, { responses: risk.score(call.request.requests) }),
      }),
    );
    return;
  }
  const pool = createPool(config, { max: GROUPS_IN_FLIGHT, applicationName: `bench-floor-${role}` });
  const writer = new FloorWriter(pool);
  if (role === 'payments') {
    const risk = new RiskServiceClient(process.env['FLOOR_RISK_TARGET']!, credentials.createInsecure());
    await grpcServer(grpcPort, (s) =>
      s.addService(PaymentServiceService, {
        createPayments: (call: ServerUnaryCall<CreatePaymentsRequest, CreatePaymentsResponse>, done: sendUnaryData<CreatePaymentsResponse>) => {
          const requests = call.request.payments.map((item) => item.request!);
          callUnary(risk, risk.scoreBatch, { requests: requests.map(scoreRequest) }, DEADLINE_MS)
            .then((scored) => writer.write(requests, scored.responses))
            .then(
              (payments) => done(null, { outcomes: payments.map((p): CreatePaymentOutcome => ({ result: { $case: 'payment', value: p } })) }),
              (error: Error) => done({ code: status.INTERNAL, details: error.message }),
            );
        },
      }),
    );
    void relay(config);
    return;
  }
  // The gateway: one process (scores and writes itself) or the first of three.
  const target = process.env['FLOOR_PAYMENTS_TARGET'];
  const risk = new FloorRisk();
  const remote = target ? Array.from({ length: config.GATEWAY_GRPC_CHANNELS }, (_, i) => new PaymentServiceClient(target, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1, 'grpc.channel_index': i })) : [];
  let next = 0;
  const create = new Coalescer(
    async (requests: CreatePaymentRequest[]): Promise<Payment[]> => {
      if (remote.length === 0) return writer.write(requests, risk.score(requests.map(scoreRequest)));
      const client = remote[next++ % remote.length]!;
      const answer = await callUnary(client, client.createPayments, { payments: requests.map((request) => ({ request, traceparent: '' })) }, DEADLINE_MS);
      return answer.outcomes.map((o) => {
        if (o.result?.$case !== 'payment') throw new Error('the floor answers payments only');
        return o.result.value;
      });
    },
    256,
    GROUPS_IN_FLIGHT,
  );
  if (remote.length === 0) void relay(config);
  const merchantId = randomUUID();
  const app = Fastify({ bodyLimit: config.GATEWAY_BODY_LIMIT_BYTES });
  app.post('/v1/payments', { schema: { body: PaymentBody } }, async (request, reply) => {
    const body = request.body as PaymentBody;
    const card = 'card' in body.source ? body.source.card : undefined;
    if (!card) return reply.code(400).send({ error: { type: 'invalid_request_error', code: 'parameter_invalid', param: 'source', message: 'the floor takes cards only' } });
    const payment = await create.add({
      idempotencyKey: String(request.headers['idempotency-key'] ?? randomUUID()),
      merchantId,
      amount: BigInt(body.amount),
      currency: body.currency,
      source: { kind: { $case: 'card', value: { token: card.token, fingerprint: card.fingerprint, country: card.country, type: card.type ?? '' } } },
      destinationAccountId: '',
      captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC,
      metadata: body.metadata ?? {},
      deviceId: body.device_id ?? '',
      ipCountry: body.ip_country ?? '',
      customerId: body.customer ?? '',
    });
    return reply.code(201).send(paymentView(payment));
  });
  await app.listen({ host: '127.0.0.1', port: Number(process.env['FLOOR_HTTP_PORT']) });
}

// Started as a role's process; bench/payments.ts imports the tables' set-up from here without starting one.
const role = process.env['FLOOR_ROLE'];
if (role) await runRole(role);
