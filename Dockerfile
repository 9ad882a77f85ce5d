# One image for every service of the project; docker-compose.yml picks the command.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
# buf and the ts-proto plugin come from node_modules: generation needs no network.
RUN npx buf generate && npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build --chown=node:node /app/package.json ./
COPY --from=build --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
# The migration runner reads SQL from <service>/migrations beside dist/.
COPY --from=build --chown=node:node /app/ledger/migrations ./dist/ledger/migrations
COPY --from=build --chown=node:node /app/lib/migrations ./dist/lib/migrations
USER node
CMD ["node", "dist/ledger/main.js"]
