import { randomUUID } from 'node:crypto';
import { LedgerClient } from '../../ledger/client.js';
import { snapshotQuery } from '../support.js';
import { connectJetStream, connectNats } from '../../lib/nats.js';
import { sleep } from '../../lib/retry.js';
import { sendUntilSettled, type Settled } from './client.js';
import type { ScenarioReport } from './report.js';
import { newMerchant, setUp } from './setup.js';
import { SERVICES, type ChaosStack, type ServiceName } from './stack.js';

/**
 * The bank test, after Jepsen's: concurrent clients move money between wallets through the REST API (transfers,
 * and payments from customer wallets to the merchant) with Idempotency-Keys and retries, while the suite kills
 * services with SIGKILL, cuts the database off and restarts NATS. Then it checks what was kept:
 * - every request answered 2xx is in the ledger exactly once, every one refused (402, or 422 id_already_failed
 *   when the refusal's answer was lost) not at all, every one that went unanswered was settled by its retry,
 *   and no retry made a second payment;
 * - each wallet's balance is its funding plus its acknowledged transfers, to the minor unit;
 * - per ledger, total debits equal total credits (posted and pending);
 * - snapshot reads taken during the run (one LookupAccounts of every bank wallet) always saw the same total;
 * - every captured payment reached the settlement consumer exactly once in effect (one capture entry).
 */
export interface BankOptions {
  /** How long clients send requests while faults are injected. */
  seconds: number;
  clients: number;
  wallets: number;
  /** Time between two faults. */
  faultEveryMs: number;
}

const USD = 'USD';
const FUNDING = 200_000;
const CUSTOMER_FUNDING = 100_000_000;

interface TransferOp {
  kind: 'transfer';
  id: string;
  debit: string;
  credit: string;
  amount: number;
  answer?: Settled;
}
interface PaymentOp {
  kind: 'payment';
  idempotencyKey: string;
  amount: number;
  answer?: Settled;
}
type Operation = TransferOp | PaymentOp;

export async function runBank(stack: ChaosStack, options: BankOptions): Promise<ScenarioReport> {
  const violations: string[] = [];
  const url = stack.gatewayUrl;
  // Set-up, before any fault: a merchant, a funding account, bank wallets and customer wallets, all funded.
  const merchant = await newMerchant(stack, 'bank');
  const key = merchant.key;
  const account = async (flags: string[]) => (await setUp(stack, key, '/v1/accounts', { id: randomUUID(), currency: USD, flags })).id as string;
  const funding = await account([]);
  const wallets = await Promise.all(Array.from({ length: options.wallets }, () => account(['debits_must_not_exceed_credits'])));
  const customers = await Promise.all(Array.from({ length: options.clients }, () => account(['debits_must_not_exceed_credits'])));
  for (const [wallet, amount] of [...wallets.map((w) => [w, FUNDING] as const), ...customers.map((c) => [c, CUSTOMER_FUNDING] as const)]) {
    await setUp(stack, key, '/v1/transfers', { id: randomUUID(), debit_account_id: funding, credit_account_id: wallet, amount, currency: USD });
  }
  const bankTotal = BigInt(FUNDING * options.wallets);

  // Snapshot reads straight from the ledger: one statement, so one snapshot of every bank wallet.
  const reader = new LedgerClient(stack.target('ledger'), { autoBatch: false, deadlineMs: 2_000 });
  const reads = { ok: 0, failed: 0, moved: 0 };
  let running = true;
  const readLoop = (async () => {
    while (running) {
      try {
        const found = await reader.lookupAccounts(wallets);
        const total = found.reduce((sum, a) => sum + a.creditsPosted - a.debitsPosted, 0n);
        if (found.length !== wallets.length || total !== bankTotal) {
          reads.moved++;
          violations.push(`snapshot read saw ${found.length} wallets with total ${total}, not ${bankTotal}`);
        } else reads.ok++;
      } catch {
        reads.failed++;
      }
      await sleep(50);
    }
  })();

  // The clients: each sends one request at a time, and sends it until it gets a final answer.
  const operations: Operation[] = [];
  const stopAt = Date.now() + options.seconds * 1000;
  const giveUpAt = stopAt + 120_000;
  const pick = <T>(list: readonly T[]): T => list[Math.floor(Math.random() * list.length)]!;
  const clients = Array.from({ length: options.clients }, async (_, c) => {
    while (Date.now() < stopAt) {
      if (Math.random() < 0.7) {
        const debit = pick(wallets);
        let credit = pick(wallets);
        while (credit === debit) credit = pick(wallets);
        const op: TransferOp = { kind: 'transfer', id: randomUUID(), debit, credit, amount: 1 + Math.floor(Math.random() * 50_000) };
        operations.push(op);
        const body = { id: op.id, debit_account_id: debit, credit_account_id: credit, amount: op.amount, currency: USD };
        op.answer = await sendUntilSettled(url, key, '/v1/transfers', { body, idempotencyKey: op.id, giveUpAt });
      } else {
        const op: PaymentOp = { kind: 'payment', idempotencyKey: randomUUID(), amount: 1 + Math.floor(Math.random() * 5_000) };
        operations.push(op);
        const body = { amount: op.amount, currency: USD, source: { account: customers[c]! }, capture_method: 'automatic' };
        op.answer = await sendUntilSettled(url, key, '/v1/payments', { body, idempotencyKey: op.idempotencyKey, giveUpAt });
      }
    }
  });

  // The faults: one every faultEveryMs, each service killed, the database cut once, NATS restarted once, in a
  // random order, then random kills. A fault does not wait for the previous one to heal: they overlap.
  const faults = async () => {
    const kill = (name: ServiceName) => [name, () => stack.killAndRestart(name, 200 + Math.random() * 1_000)] as const;
    const plan: (readonly [string, () => Promise<void>])[] = [
      ...SERVICES.map(kill),
      ['postgres', () => stack.cutDatabase(2_000)] as const,
      ['nats', () => stack.restartNats(2_000)] as const,
    ].sort(() => Math.random() - 0.5);
    const healing = new Map<string, Promise<void>>();
    while (Date.now() < stopAt - options.faultEveryMs) {
      await sleep(options.faultEveryMs * (0.5 + Math.random()));
      const [what, inject] = plan.shift() ?? kill(pick(SERVICES));
      // A service still down is restarted before it is killed again.
      if (healing.has(what)) continue;
      // A fault that could not be healed (a service that would not start again) is reported, not lost.
      const healed = inject().catch((error: unknown) => void violations.push(`${what} not back after its fault: ${error instanceof Error ? error.message : String(error)}`));
      healing.set(what, healed.finally(() => healing.delete(what)));
    }
    await Promise.all(healing.values());
  };
  await Promise.all([faults(), ...clients]);
  running = false;
  await readLoop;
  reader.close();

  if (reads.ok === 0) violations.push('no snapshot read succeeded: the snapshot check saw nothing');
  const counts = await check(stack, { operations, wallets, customers, funding: FUNDING, merchantId: merchant.id }, violations);
  return {
    counts: {
      ...counts,
      'snapshot reads': reads.ok + reads.moved,
      'snapshot reads that saw the total move': reads.moved,
      'reads refused during faults': reads.failed,
      ...Object.fromEntries([...stack.kills].map(([what, n]) => [what === 'postgres' ? 'postgres cut off' : what === 'nats' ? 'nats restarts' : what.endsWith('failures') ? what : `${what} kill -9`, n])),
    },
    violations,
  };
}

interface Run {
  operations: readonly Operation[];
  wallets: readonly string[];
  customers: readonly string[];
  funding: number;
  merchantId: string;
}

/** What was kept, against what the clients were told. Pushes a line per violation; returns the counts. */
async function check(stack: ChaosStack, run: Run, violations: string[]): Promise<Record<string, number>> {
  const pool = { query: (text: string, values?: unknown[]) => snapshotQuery(stack.pool, text, values) };
  const transfers = run.operations.filter((o): o is TransferOp => o.kind === 'transfer');
  const payments = run.operations.filter((o): o is PaymentOp => o.kind === 'payment');
  let lost = 0;
  let duplicated = 0;
  let unsettled = 0;

  // Transfers: 2xx exactly once with its amount, 402 never; the wallets' balances follow from the 2xx ones.
  const stored = new Map<string, { n: number; amount: bigint }>(
    (await pool.query('SELECT id, count(*)::int AS n, max(amount) AS amount FROM transfers WHERE id = ANY($1::uuid[]) GROUP BY id', [transfers.map((t) => t.id)])).rows.map((r) => [r.id, { n: r.n, amount: r.amount }]),
  );
  const expected = new Map(run.wallets.map((w) => [w, BigInt(run.funding)]));
  for (const t of transfers) {
    const row = stored.get(t.id);
    const status = t.answer?.status;
    if (status === undefined) {
      unsettled++;
      violations.push(`transfer ${t.id}: no final answer after retrying`);
    } else if (status === 200 || status === 201) {
      if (!row) {
        lost++;
        violations.push(`transfer ${t.id}: acknowledged ${status} but not in the ledger`);
      } else if (row.amount !== BigInt(t.amount)) violations.push(`transfer ${t.id}: amount ${row.amount} in the ledger, ${t.amount} sent`);
      expected.set(t.debit, expected.get(t.debit)! - BigInt(t.amount));
      expected.set(t.credit, expected.get(t.credit)! + BigInt(t.amount));
    } else if (status === 402 || (status === 422 && t.answer?.body?.error?.code === 'id_already_failed')) {
      // 422 id_already_failed: an earlier attempt was refused (402) and its answer lost; the id is spent.
      if (row) violations.push(`transfer ${t.id}: refused with ${status} but in the ledger`);
    } else violations.push(`transfer ${t.id}: unexpected final answer ${status} ${JSON.stringify(t.answer?.body)}`);
    if (row && row.n > 1) duplicated += row.n - 1;
  }
  const balances = await pool.query('SELECT id, credits_posted - debits_posted AS net, debits_pending + credits_pending AS pending FROM account_balances_current WHERE id = ANY($1::uuid[])', [run.wallets]);
  if (balances.rows.length !== run.wallets.length) violations.push(`${balances.rows.length} of ${run.wallets.length} wallets found in the ledger`);
  for (const r of balances.rows) {
    if (r.net !== expected.get(r.id)) violations.push(`wallet ${r.id}: balance ${r.net} in the ledger, ${expected.get(r.id)} from the acknowledged transfers`);
    if (r.pending !== 0n) violations.push(`wallet ${r.id}: ${r.pending} pending`);
  }

  // Payments: one payment per Idempotency-Key whatever the retries, in the state the client was told.
  const rows = await pool.query('SELECT id, idempotency_key, status, amount, amount_captured FROM payments WHERE merchant_id = $1', [run.merchantId]);
  const byKey = new Map<string, { id: string; status: string; amount: bigint; amount_captured: bigint }[]>();
  for (const r of rows.rows) byKey.set(r.idempotency_key, [...(byKey.get(r.idempotency_key) ?? []), r]);
  let captured = 0n;
  const capturedAmounts = new Map<string, bigint>();
  for (const p of payments) {
    const found = byKey.get(p.idempotencyKey) ?? [];
    if (found.length > 1) duplicated += found.length - 1;
    const status = p.answer?.status;
    if (status === undefined) {
      unsettled++;
      violations.push(`payment ${p.idempotencyKey}: no final answer after retrying`);
      continue;
    }
    const told = p.answer!.body;
    const row = found[0];
    if (status !== 201 && status !== 402) violations.push(`payment ${p.idempotencyKey}: unexpected final answer ${status} ${JSON.stringify(told)}`);
    else if (!row || row.id !== told?.id) {
      lost++;
      violations.push(`payment ${p.idempotencyKey}: answered ${status} with ${told?.id} but the database has ${row?.id}`);
    } else if (row.status !== told.status) violations.push(`payment ${row.id}: ${row.status} in the database, ${told.status} told`);
    else if (row.status === 'succeeded') {
      captured += row.amount_captured;
      capturedAmounts.set(row.id, row.amount_captured);
    }
  }
  const customerDebits = await pool.query('SELECT COALESCE(sum(debits_posted), 0)::int8 AS d FROM account_balances_current WHERE id = ANY($1::uuid[])', [run.customers]);
  if (customerDebits.rows[0].d !== captured) violations.push(`customer wallets were debited ${customerDebits.rows[0].d}, the succeeded payments captured ${captured}`);

  // The books balance on every ledger.
  const books = await pool.query(
    `SELECT ledger, sum(debits_posted) AS dp, sum(credits_posted) AS cp, sum(debits_pending) AS dq, sum(credits_pending) AS cq FROM account_balances_current GROUP BY ledger`,
  );
  for (const r of books.rows) if (r.dp !== r.cp || r.dq !== r.cq) violations.push(`ledger ${r.ledger}: debits ${r.dp}/${r.dq} pending, credits ${r.cp}/${r.cq} pending`);

  // Each captured payment reached the settlement consumer once in effect: one payment.captured event of its amount
  // in settlement's journal. Paid from customer wallets, none of it is paid out: no capture entry.
  const capturedIds = [...capturedAmounts.keys()];
  if (capturedIds.length === 0) violations.push('no payment succeeded: the consumer check saw nothing');
  const consumedBy = Date.now() + 90_000;
  let entries: Map<string, { n: number; amount: bigint; paidOut: number }>;
  for (;;) {
    const r = await pool.query(
      `SELECT e.payment_id, count(*)::int AS n, sum(e.amount)::int8 AS amount,
              (SELECT count(*) FROM settlement_entries s WHERE s.payment_id = e.payment_id AND s.kind = 'capture')::int AS paid_out
       FROM settlement_events e WHERE e.type = 'payment.captured' AND e.payment_id = ANY($1::uuid[]) GROUP BY e.payment_id`,
      [capturedIds],
    );
    entries = new Map(r.rows.map((e) => [e.payment_id, { n: e.n, amount: e.amount, paidOut: e.paid_out }]));
    if (entries.size === capturedIds.length || Date.now() > consumedBy) break;
    await sleep(500);
  }
  let notConsumed = 0;
  for (const id of capturedIds) {
    const e = entries.get(id);
    if (!e) notConsumed++;
    else if (e.n !== 1) violations.push(`payment ${id}: ${e.n} payment.captured events consumed by settlement`);
    else if (e.amount !== capturedAmounts.get(id)) violations.push(`payment ${id}: settlement consumed ${e.amount}, captured ${capturedAmounts.get(id)}`);
    else if (e.paidOut !== 0) violations.push(`payment ${id}: paid from a wallet, yet ${e.paidOut} capture entries to pay out`);
  }
  if (notConsumed > 0) violations.push(`${notConsumed} captured payments never reached settlement`);
  // No event was poison here: anything dead-lettered was lost to its consumer by a fault.
  const deadLetters = await countDeadLetters(stack);
  if (deadLetters > 0) violations.push(`${deadLetters} messages dead-lettered during the run`);

  const acknowledged = run.operations.filter((o) => o.answer && o.answer.status < 300).length;
  return {
    requests: run.operations.length,
    transfers: transfers.length,
    payments: payments.length,
    acknowledged,
    'refused (402)': run.operations.filter((o) => o.answer?.status === 402).length,
    retried: run.operations.filter((o) => (o.answer?.attempts ?? 2) > 1).length,
    'attempts without an answer': run.operations.reduce((n, o) => n + (o.answer?.unanswered ?? 0), 0),
    'payments settled by the consumer': capturedIds.length - notConsumed,
    unsettled,
    lost,
    duplicated,
  };
}

/** Messages in the DEADLETTER stream of the stack's NATS server (0 when no consumer ever made one). */
async function countDeadLetters(stack: ChaosStack): Promise<number> {
  const nc = await connectNats({ NATS_URL: stack.nats.url }, { name: 'chaos-check' });
  try {
    const { jsm } = await connectJetStream(nc);
    return (await jsm.streams.info('DEADLETTER')).state.messages;
  } catch (error) {
    if (/stream not found/i.test(String(error))) return 0;
    throw error;
  } finally {
    await nc.close();
  }
}
