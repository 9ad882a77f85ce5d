import type { Gateway, RouteContext } from '../app.js';
import { createMerchant } from '../auth.js';
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
      return reply.code(201).send(await createMerchant(ctx.pool, request.body.name, ctx.config.PAYMENTS_DEFAULT_FEE_BPS, request.body.category));
    },
  );
}
