import { MERCHANT_CATEGORIES } from '../../lib/merchant-categories.js';
import { Rng } from './random.js';

/**
 * A seeded synthetic payments log in the spirit of PaySim: customers with home countries, cards and devices,
 * merchants with categories, payments over simulated weeks, and documented fraud patterns:
 * - card testing: a stolen card tried with bursts of small amounts within minutes, from a new device abroad;
 * - account takeover: a customer's card from a new device, IP country not the card's, amount many times the
 *   customer's usual;
 * - merchant collusion: a colluding merchant charging a few cards large amounts in a short time;
 * - velocity spike: a compromised card paying ordinary amounts many times within an hour.
 * Fraud is labelled by a chargeback that arrives 1-30 days later (`labelAt`); until then it looks legitimate.
 */

export type FraudPattern = 'none' | 'card_testing' | 'account_takeover' | 'collusion' | 'velocity';

export interface SynthPayment {
  id: string;
  /** Milliseconds since the simulation's start. */
  at: number;
  merchantId: string;
  merchantCategory: string;
  customerId: string;
  cardFingerprint: string;
  cardType: 'credit' | 'debit' | 'prepaid';
  cardCountry: string;
  deviceId: string;
  ipCountry: string;
  /** Minor units. */
  amount: number;
  fraud: boolean;
  pattern: FraudPattern;
  /** When the chargeback (the label) arrives, for fraud; null otherwise. */
  labelAt: number | null;
}

export interface SynthOptions {
  seed: number;
  weeks: number;
  customers: number;
  merchants: number;
  /** Legitimate payments per customer per day, on average. */
  paymentsPerCustomerDay: number;
  /** Fraud incidents per day, split across the patterns. */
  fraudIncidentsPerDay: number;
}

export const DEFAULT_SYNTH: SynthOptions = { seed: 7, weeks: 6, customers: 2_000, merchants: 100, paymentsPerCustomerDay: 0.5, fraudIncidentsPerDay: 1.2 };

const DAY = 86_400_000;
const COUNTRIES = ['US', 'US', 'US', 'GB', 'DE', 'FR', 'ES', 'BR', 'IN', 'NG'];
const FOREIGN = ['RU', 'NG', 'BR', 'VN', 'UA', 'ID'];

interface Customer {
  id: string;
  country: string;
  cards: { fingerprint: string; type: SynthPayment['cardType']; country: string }[];
  devices: string[];
  /** Log of the customer's usual amount (minor units). */
  logMean: number;
}

export function generatePayments(options: SynthOptions = DEFAULT_SYNTH): SynthPayment[] {
  const rng = new Rng(options.seed);
  let serial = 0;
  const nextId = (prefix: string) => `${prefix}_${(serial++).toString(36)}`;
  const merchants = Array.from({ length: options.merchants }, (_, i) => ({ id: `m_${i}`, category: rng.pick(MERCHANT_CATEGORIES), colluding: false }));
  for (let i = 0; i < Math.max(1, Math.round(options.merchants / 50)); i++) rng.pick(merchants).colluding = true;
  const customers: Customer[] = Array.from({ length: options.customers }, (_, i) => {
    const country = rng.pick(COUNTRIES);
    return {
      id: `c_${i}`,
      country,
      cards: Array.from({ length: rng.int(1, 3) }, () => ({ fingerprint: nextId('card'), type: rng.pick(['credit', 'credit', 'debit', 'debit', 'prepaid'] as const), country })),
      devices: Array.from({ length: rng.int(1, 2) }, () => nextId('dev')),
      logMean: Math.log(2_000) + rng.normal() * 0.8,
    };
  });

  const payments: SynthPayment[] = [];
  const days = options.weeks * 7;
  const legit = (c: Customer, at: number): SynthPayment => {
    const card = rng.pick(c.cards);
    const merchant = rng.pick(merchants);
    return {
      id: nextId('pay'),
      at,
      merchantId: merchant.id,
      merchantCategory: merchant.category,
      customerId: c.id,
      cardFingerprint: card.fingerprint,
      cardType: card.type,
      cardCountry: card.country,
      deviceId: rng.pick(c.devices),
      // Travellers pay abroad now and then: a country mismatch alone is not fraud.
      ipCountry: rng.chance(0.03) ? rng.pick(COUNTRIES) : c.country,
      amount: Math.max(50, Math.round(Math.exp(c.logMean + rng.normal() * 0.6))),
      fraud: false,
      pattern: 'none',
      labelAt: null,
    };
  };
  const fraud = (p: Omit<SynthPayment, 'fraud' | 'labelAt' | 'id'>): SynthPayment => ({ ...p, id: nextId('pay'), fraud: true, labelAt: p.at + DAY * (1 + rng.next() * 29) });

  for (let day = 0; day < days; day++) {
    const start = day * DAY;
    for (const c of customers) {
      const n = Math.floor(rng.exponential(options.paymentsPerCustomerDay) + (rng.chance(options.paymentsPerCustomerDay % 1) ? 1 : 0));
      for (let k = 0; k < n; k++) payments.push(legit(c, start + rng.int(0, DAY - 1)));
    }
    const incidents = Math.round(rng.exponential(options.fraudIncidentsPerDay));
    for (let k = 0; k < incidents; k++) {
      const at = start + rng.int(0, DAY - 3_600_000);
      const pattern = rng.pick(['card_testing', 'account_takeover', 'collusion', 'velocity'] as const);
      const victim = rng.pick(customers);
      const card = rng.pick(victim.cards);
      const device = nextId('dev');
      const abroad = rng.pick(FOREIGN);
      if (pattern === 'card_testing') {
        const stolen = { fingerprint: nextId('card'), type: rng.pick(['credit', 'prepaid'] as const), country: rng.pick(COUNTRIES) };
        for (let i = 0, t = at; i < rng.int(5, 20); i++, t += rng.int(5_000, 60_000)) {
          const m = rng.pick(merchants);
          payments.push(fraud({ at: t, merchantId: m.id, merchantCategory: m.category, customerId: `c_guest_${stolen.fingerprint}`, cardFingerprint: stolen.fingerprint, cardType: stolen.type, cardCountry: stolen.country, deviceId: device, ipCountry: abroad, amount: rng.int(100, 300), pattern }));
        }
      } else if (pattern === 'account_takeover') {
        const m = rng.pick(merchants.filter((x) => x.category === 'electronics' || x.category === 'gift_cards' || x.category === 'travel'));
        for (let i = 0, t = at; i < rng.int(1, 3); i++, t += rng.int(60_000, 600_000)) {
          payments.push(fraud({ at: t, merchantId: (m ?? merchants[0]!).id, merchantCategory: (m ?? merchants[0]!).category, customerId: victim.id, cardFingerprint: card.fingerprint, cardType: card.type, cardCountry: card.country, deviceId: device, ipCountry: abroad, amount: Math.round(Math.exp(victim.logMean) * (5 + rng.next() * 15)), pattern }));
        }
      } else if (pattern === 'collusion') {
        const m = rng.pick(merchants.filter((x) => x.colluding));
        const cards = Array.from({ length: rng.int(2, 4) }, () => ({ fingerprint: nextId('card'), type: 'prepaid' as const, country: rng.pick(COUNTRIES) }));
        for (let i = 0, t = at; i < rng.int(4, 10); i++, t += rng.int(30_000, 900_000)) {
          const c = rng.pick(cards);
          payments.push(fraud({ at: t, merchantId: m.id, merchantCategory: m.category, customerId: `c_guest_${c.fingerprint}`, cardFingerprint: c.fingerprint, cardType: c.type, cardCountry: c.country, deviceId: rng.pick([device, nextId('dev')]), ipCountry: c.country, amount: rng.int(20_000, 90_000), pattern }));
        }
      } else {
        for (let i = 0, t = at; i < rng.int(8, 25); i++, t += rng.int(60_000, 240_000)) {
          const m = rng.pick(merchants);
          payments.push(fraud({ at: t, merchantId: m.id, merchantCategory: m.category, customerId: victim.id, cardFingerprint: card.fingerprint, cardType: card.type, cardCountry: card.country, deviceId: rng.pick([...victim.devices, device]), ipCountry: rng.chance(0.5) ? abroad : victim.country, amount: Math.max(50, Math.round(Math.exp(victim.logMean + rng.normal() * 0.6))), pattern }));
        }
      }
    }
  }
  // Colluding merchants also take legitimate payments, so the merchant alone does not give them away.
  return payments.sort((a, b) => a.at - b.at || (a.id < b.id ? -1 : 1));
}
