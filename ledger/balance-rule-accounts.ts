/** For those of `ids` that exist, whether they have balance rules. */
export type BalanceRulesReader = (ids: readonly string[]) => Promise<Map<string, boolean>>;

/**
 * Which accounts have balance rules, as routing needs to know: the events of one request that share such an
 * account must run in one batch, in request order. An account has them from its creation (BALANCE_RULE_FLAGS)
 * or from the moment it turns wide (its balances are then read in full: an overflow check depends on them), and
 * never loses them, so what this learns stays true: from the accounts this instance creates, from the wide
 * accounts its batches meet, and for the others (made by another instance, or before a restart) from one read.
 * Accounts that do not exist are not remembered (they may be created later); their events fail in any order.
 */
export class BalanceRuleAccounts {
  private readonly known = new Map<string, boolean>();

  constructor(
    private readonly read: BalanceRulesReader,
    /** Accounts remembered at most; past it the oldest are forgotten (and read again when met). */
    private readonly capacity = 500_000,
  ) {}

  /** Records what is known of an account; balance rules, once known, are never forgotten for "none". */
  remember(id: string, ruled: boolean): void {
    const known = this.known.get(id);
    if (known === true || known === ruled) return;
    if (known === undefined && this.known.size >= this.capacity) this.known.delete(this.known.keys().next().value!);
    this.known.set(id, ruled);
  }

  /** Those of `ids` whose accounts have balance rules. */
  async among(ids: Iterable<string>): Promise<Set<string>> {
    const ruled = new Set<string>();
    const unknown: string[] = [];
    for (const id of ids) {
      const known = this.known.get(id);
      if (known === undefined) unknown.push(id);
      else if (known) ruled.add(id);
    }
    if (unknown.length > 0) {
      for (const [id, hasRules] of await this.read(unknown)) {
        this.remember(id, hasRules);
        if (hasRules) ruled.add(id);
      }
    }
    return ruled;
  }
}
