import type { Pool } from '../lib/db.js';
import { AppError } from '../lib/errors.js';

/** Which of `accountIds` the merchant owns, with their currencies. Another merchant's account is simply absent. */
export async function ownedAccounts(pool: Pool, merchantId: string, accountIds: readonly string[]): Promise<Map<string, string>> {
  if (accountIds.length === 0) return new Map();
  const r = await pool.query({
    name: 'gw-owned-accounts',
    text: 'SELECT account_id, currency FROM merchant_accounts WHERE merchant_id = $1 AND account_id = ANY($2::uuid[])',
    values: [merchantId, [...new Set(accountIds)]],
  });
  return new Map(r.rows.map((row) => [row.account_id as string, row.currency as string]));
}

export const accountNotFound = (field: string) => new AppError('not_found', 'resource_missing', 'No such account', { field });

/** The account's currency if the merchant owns it; 404 otherwise (never "exists but is not yours"). */
export async function requireOwnedAccount(pool: Pool, merchantId: string, accountId: string, field = 'id'): Promise<string> {
  const currency = (await ownedAccounts(pool, merchantId, [accountId])).get(accountId.toLowerCase());
  if (!currency) throw accountNotFound(field);
  return currency;
}
