import type { Gateway, RouteContext } from '../app.js';
import { createMerchant, type NewMerchant } from '../auth.js';
import { seal } from '../sealed-answer.js';
import { COMMON_ERRORS, Merchant, MerchantBody } from '../schemas.js';

export function merchantRoutes(app: Gateway, ctx: RouteContext): void {
  app.post(
    '/v1/merchants',
    {
      schema: {
        description: 'Platform admin key only: creates a merchant and its first secret key (shown once; an idempotent replay shows it again only to the same admin key).',
        body: MerchantBody,
        response: { 201: Merchant, ...COMMON_ERRORS },
      },
      config: { answersSecret: true },
    },
    async (request, reply) => {
      ctx.requireAdmin(request);
      // The answer (it carries the new key) is recorded sealed in the transaction that creates the merchant: a
      // retry after a lost reply or a gateway crash replays it instead of creating a second merchant.
      const held = request.idempotency;
      let answer = '';
      await createMerchant(ctx.pool, request.body.name, ctx.config.PAYMENTS_DEFAULT_FEE_BPS, request.body.category, async (client, merchant) => {
        answer = JSON.stringify(merchant);
        if (held?.sealedFor) await ctx.idempotency.completeWithin(client, held, 201, seal(answer, held.sealedFor, held.key));
      });
      request.idempotency = null; // recorded already
      // The recorded text itself (not the object serialized again): a replay is then byte for byte this answer.
      return reply.code(201).type('application/json; charset=utf-8').send(answer as unknown as NewMerchant);
    },
  );
}
