import { MERCHANT_CATEGORIES } from '../../lib/merchant-categories.js';

/**
 * Online features of a payment, computed from the payments seen before it. The same class serves both paths:
 * training replays the event log through it (`offlineFeatures`), serving updates it from payment events and
 * reads it at Score time, so training and serving cannot drift apart. Memory is bounded: at most `maxKeys`
 * keys per entity kind (least recently seen forgotten) and at most the last 24 h (and 200 events) per key.
 */

export interface PaymentFacts {
  at: number;
  merchantId: string;
  merchantCategory: string;
  customerId: string;
  cardFingerprint: string;
  cardType: string;
  cardCountry: string;
  deviceId: string;
  ipCountry: string;
  amount: number;
  /** The payment, when known: a payment observed again (its event delivered again) is not counted twice. */
  paymentId?: string;
}

export const FEATURE_NAMES = [
  'log_amount',
  'card_count_1m',
  'card_count_1h',
  'card_count_24h',
  'card_sum_1h_log',
  'customer_count_1h',
  'customer_count_24h',
  'customer_amount_z',
  'customer_age_days',
  'device_count_1h',
  'device_distinct_cards_24h',
  'device_new_for_customer',
  'merchant_count_1h',
  'country_mismatch',
  'card_prepaid',
  'merchant_category_risk',
] as const;
export type FeatureVector = number[];

const MINUTE = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
const MAX_EVENTS_PER_KEY = 200;

/** Prior fraud propensity of a merchant category (a static table, not learnt from labels: no leakage). */
const CATEGORY_RISK: Record<string, number> = { general: 0.3, grocery: 0.1, restaurants: 0.1, clothing: 0.3, travel: 0.5, digital_goods: 0.6, electronics: 0.8, gift_cards: 0.9 };
for (const c of MERCHANT_CATEGORIES) CATEGORY_RISK[c] ??= 0.5;

interface Recent {
  at: number[];
  amount: number[];
  tag: string[];
}

/** Recent events per key, bounded in keys (LRU) and per key (time and count). */
class Window {
  private readonly keys = new Map<string, Recent>();

  constructor(private readonly maxKeys: number) {}

  get(key: string): Recent | undefined {
    return this.keys.get(key);
  }

  add(key: string, at: number, amount: number, tag = ''): void {
    // An unknown entity (no card, no device) is nobody: its events must not pile up under one empty key.
    if (key === '') return;
    const recent = this.keys.get(key) ?? { at: [], amount: [], tag: [] };
    this.keys.delete(key);
    // In time order (the counts read from the newest back): the payment events of different shards reach the
    // feed interleaved, so an event can be older than the last one seen.
    let i = recent.at.length;
    while (i > 0 && recent.at[i - 1]! > at) i--;
    recent.at.splice(i, 0, at);
    recent.amount.splice(i, 0, amount);
    recent.tag.splice(i, 0, tag);
    const newest = recent.at[recent.at.length - 1]!;
    let drop = 0;
    while (drop < recent.at.length && (recent.at[drop]! <= newest - DAY || recent.at.length - drop > MAX_EVENTS_PER_KEY)) drop++;
    if (drop > 0) for (const list of [recent.at, recent.amount, recent.tag] as unknown[][]) list.splice(0, drop);
    this.keys.set(key, recent);
    if (this.keys.size > this.maxKeys) this.keys.delete(this.keys.keys().next().value!);
  }

  count(key: string, since: number): number {
    const recent = this.keys.get(key);
    if (!recent) return 0;
    let n = 0;
    for (let i = recent.at.length - 1; i >= 0 && recent.at[i]! > since; i--) n++;
    return n;
  }

  sum(key: string, since: number): number {
    const recent = this.keys.get(key);
    let total = 0;
    if (recent) for (let i = recent.at.length - 1; i >= 0 && recent.at[i]! > since; i--) total += recent.amount[i]!;
    return total;
  }

  distinctTags(key: string, since: number): number {
    const recent = this.keys.get(key);
    const tags = new Set<string>();
    // An empty tag is no card (a wallet payment): it is not one more distinct card on the device.
    if (recent) for (let i = recent.at.length - 1; i >= 0 && recent.at[i]! > since; i--) if (recent.tag[i] !== '') tags.add(recent.tag[i]!);
    return tags.size;
  }

  get size(): number {
    return this.keys.size;
  }

  /** Every key's recent events, least recently seen first (the order the LRU bound relies on). */
  entries(): [string, Recent][] {
    return [...this.keys];
  }

  /** Replaces the contents with `entries` (as from entries()), the most recent `maxKeys` kept. */
  restore(entries: readonly [string, Recent][]): void {
    this.keys.clear();
    for (const [key, recent] of entries.slice(-this.maxKeys)) this.keys.set(key, recent);
  }
}

/** A FeatureStore's state as plain data (JSON-safe), each map in LRU order. */
export interface FeatureSnapshot {
  version: 1;
  cards: [string, Recent][];
  customersRecent: [string, Recent][];
  devices: [string, Recent][];
  merchants: [string, Recent][];
  customers: [string, CustomerStats][];
  /** The payments observed (id, time), least recently first; absent in older snapshots. */
  payments?: [string, number][];
}

interface CustomerStats {
  firstSeen: number;
  n: number;
  mean: number;
  m2: number;
  devices: string[];
}

export class FeatureStore {
  private readonly cards: Window;
  private readonly customersRecent: Window;
  private readonly devices: Window;
  private readonly merchants: Window;
  private readonly customers = new Map<string, CustomerStats>();
  /** Payments observed, by id (the last maxKeys): JetStream delivers at least once. */
  private readonly payments = new Map<string, number>();

  constructor(private readonly maxKeys = 200_000) {
    this.cards = new Window(maxKeys);
    this.customersRecent = new Window(maxKeys);
    this.devices = new Window(maxKeys);
    this.merchants = new Window(maxKeys);
  }

  /** The features of `p` from what was observed before it (call before `observe(p)`). */
  features(p: PaymentFacts): FeatureVector {
    const stats = p.customerId === '' ? undefined : this.customers.get(p.customerId);
    const logAmount = Math.log1p(p.amount);
    const std = stats && stats.n > 1 ? Math.sqrt(stats.m2 / (stats.n - 1)) : 0;
    return [
      logAmount,
      this.cards.count(p.cardFingerprint, p.at - MINUTE),
      this.cards.count(p.cardFingerprint, p.at - HOUR),
      this.cards.count(p.cardFingerprint, p.at - DAY),
      Math.log1p(this.cards.sum(p.cardFingerprint, p.at - HOUR)),
      this.customersRecent.count(p.customerId, p.at - HOUR),
      this.customersRecent.count(p.customerId, p.at - DAY),
      // Against the customer's own history of log amounts; 0 until there are two.
      std > 0 ? Math.max(-10, Math.min(10, (logAmount - stats!.mean) / std)) : 0,
      stats ? Math.min(365, (p.at - stats.firstSeen) / DAY) : 0,
      this.devices.count(p.deviceId, p.at - HOUR),
      this.devices.distinctTags(p.deviceId, p.at - DAY),
      stats && !stats.devices.includes(p.deviceId) ? 1 : 0,
      this.merchants.count(p.merchantId, p.at - HOUR),
      p.cardCountry !== '' && p.ipCountry !== '' && p.cardCountry !== p.ipCountry ? 1 : 0,
      p.cardType === 'prepaid' ? 1 : 0,
      CATEGORY_RISK[p.merchantCategory] ?? 0.5,
    ];
  }

  /** Adds `p` to the history; false (nothing changed) when its payment was observed already. */
  observe(p: PaymentFacts): boolean {
    if (p.paymentId) {
      if (this.payments.has(p.paymentId)) return false;
      this.payments.set(p.paymentId, p.at);
      if (this.payments.size > this.maxKeys) this.payments.delete(this.payments.keys().next().value!);
    }
    this.cards.add(p.cardFingerprint, p.at, p.amount);
    this.customersRecent.add(p.customerId, p.at, p.amount);
    this.devices.add(p.deviceId, p.at, p.amount, p.cardFingerprint);
    this.merchants.add(p.merchantId, p.at, p.amount);
    const logAmount = Math.log1p(p.amount);
    if (p.customerId === '') return true;
    const stats = this.customers.get(p.customerId) ?? { firstSeen: p.at, n: 0, mean: 0, m2: 0, devices: [] };
    this.customers.delete(p.customerId);
    stats.firstSeen = Math.min(stats.firstSeen, p.at);
    // Welford's running mean and variance of the log amount.
    stats.n++;
    const delta = logAmount - stats.mean;
    stats.mean += delta / stats.n;
    stats.m2 += delta * (logAmount - stats.mean);
    if (!stats.devices.includes(p.deviceId)) stats.devices = [...stats.devices.slice(-9), p.deviceId];
    this.customers.set(p.customerId, stats);
    if (this.customers.size > this.maxKeys) this.customers.delete(this.customers.keys().next().value!);
    return true;
  }

  /** The whole state, as plain data: what a checkpoint stores (feature-checkpoints.ts). */
  snapshot(): FeatureSnapshot {
    return {
      version: 1,
      cards: this.cards.entries(),
      customersRecent: this.customersRecent.entries(),
      devices: this.devices.entries(),
      merchants: this.merchants.entries(),
      customers: [...this.customers],
      payments: [...this.payments],
    };
  }

  /** Replaces the state with a snapshot's: the store then computes what the store that took it would. */
  restore(snapshot: FeatureSnapshot): void {
    if (snapshot.version !== 1) throw new Error(`feature snapshot version ${String(snapshot.version)} is not supported`);
    this.cards.restore(snapshot.cards);
    this.customersRecent.restore(snapshot.customersRecent);
    this.devices.restore(snapshot.devices);
    this.merchants.restore(snapshot.merchants);
    this.customers.clear();
    for (const [key, stats] of snapshot.customers.slice(-this.maxKeys)) this.customers.set(key, stats);
    this.payments.clear();
    for (const [id, at] of (snapshot.payments ?? []).slice(-this.maxKeys)) this.payments.set(id, at);
  }

  /** Keys held per entity kind (the memory bound is maxKeys each). */
  sizes(): Record<string, number> {
    return { cards: this.cards.size, customers: this.customers.size, devices: this.devices.size, merchants: this.merchants.size };
  }
}

/** The offline path: the features of every payment of a chronological log, exactly as serving computes them. */
export function offlineFeatures(log: readonly PaymentFacts[], store = new FeatureStore()): FeatureVector[] {
  return log.map((p) => {
    const vector = store.features(p);
    store.observe(p);
    return vector;
  });
}
