# One image for every service of the project; docker-compose.yml picks the command
# (node dist/scripts/migrate.js, node dist/ledger/main.js, ...).

# --- build: dependencies, generated gRPC code, compiled JavaScript ---
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
# buf and the ts-proto plugin (buf.gen.yaml: ./node_modules/.bin/protoc-gen-ts_proto -> proto/gen) come from
# node_modules, so generation needs no network; then tsc -p tsconfig.build.json -> dist/.
RUN npx buf generate \
 && npm run build \
 && npm prune --omit=dev --no-audit --no-fund
# The migration runner (lib/migrate.ts) reads SQL from <service>/migrations beside its own compiled folder,
# i.e. dist/<service>/migrations: put every service's migrations there.
RUN for s in lib ledger gateway risk settlement; do \
      if [ -d "$s/migrations" ]; then mkdir -p "dist/$s/migrations" && cp -R "$s/migrations/." "dist/$s/migrations/"; fi; \
    done

# --- runtime: production dependencies and dist/ only, non-root ---
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build --chown=node:node /app/package.json ./
COPY --from=build --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
# Already in dist/ from the loop above; named here so a build without the ledger's schema fails loudly.
COPY --from=build --chown=node:node /app/ledger/migrations ./dist/ledger/migrations
USER node
EXPOSE 50051 9464
CMD ["node", "dist/ledger/main.js"]
