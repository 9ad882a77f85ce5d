import { readFileSync } from 'node:fs';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { checkServerIdentity } from 'node:tls';
import { Metadata, ServerCredentials, ServerInterceptingCall, credentials, status, type ChannelCredentials, type ServerInterceptor, type ServerOptions } from '@grpc/grpc-js';
import type { Config } from './config.js';
import { ConfigError } from './errors.js';

/**
 * How gRPC between the services is secured: mutual TLS when GRPC_TLS_CA, GRPC_TLS_CERT and GRPC_TLS_KEY are
 * set, plaintext when none is (lib/config.ts refuses a partial setting).
 *
 * Mutual, not server-only: a server requires a client certificate signed by GRPC_TLS_CA, so only the project's
 * own services (and operators' CLIs holding a certificate) can move money through the ledger's API; a client
 * checks the server's certificate against the same CA and its name against the target's host (or
 * GRPC_TLS_SERVER_NAME). Each process presents its one certificate in both roles. A TLS server refuses a
 * plaintext client at the handshake, so a caller that was not configured fails closed (UNAVAILABLE).
 *
 * The files are read and checked once per configuration, at start-up, when the first server or client is made:
 * a missing file or a key that does not match its certificate stops the process with a ConfigError naming the
 * variable. Rotating certificates means restarting the process.
 */
export type GrpcTlsConfig = Pick<Config, 'GRPC_TLS_CA' | 'GRPC_TLS_CERT' | 'GRPC_TLS_KEY' | 'GRPC_TLS_SERVER_NAME'> & Partial<Pick<Config, 'GRPC_TLS_ALLOWED_CLIENTS'>>;

interface GrpcCredentials {
  server: ServerCredentials;
  channel: ChannelCredentials;
}

const loaded = new WeakMap<GrpcTlsConfig, GrpcCredentials>();

/** Whether gRPC runs over mutual TLS with this configuration. */
export function grpcTlsEnabled(config: GrpcTlsConfig): boolean {
  return config.GRPC_TLS_CA !== undefined || config.GRPC_TLS_CERT !== undefined || config.GRPC_TLS_KEY !== undefined;
}

/** For every gRPC server of the project (Server#bindAsync). */
export function serverCredentials(config: GrpcTlsConfig): ServerCredentials {
  return credentialsOf(config).server;
}

/**
 * Options of every gRPC server of the project: with GRPC_TLS_ALLOWED_CLIENTS, an interceptor that refuses a
 * call (PERMISSION_DENIED) whose client certificate's common name is not listed. Mutual TLS alone admits any
 * certificate of the CA; this keeps, say, the risk service from moving money through the ledger.
 */
export function serverOptions(config: GrpcTlsConfig): ServerOptions {
  const names = config.GRPC_TLS_ALLOWED_CLIENTS?.split(',');
  return names ? { interceptors: [allowClients(new Set(names))] } : {};
}

function allowClients(allowed: ReadonlySet<string>): ServerInterceptor {
  return (_method, call) => {
    const commonName = call.getAuthContext().sslPeerCertificate?.subject?.CN;
    const name = Array.isArray(commonName) ? undefined : commonName;
    if (name !== undefined && allowed.has(name)) return new ServerInterceptingCall(call);
    return new ServerInterceptingCall(call, {
      start: () => call.sendStatus({ code: status.PERMISSION_DENIED, details: `client certificate ${JSON.stringify(name ?? '')} is not allowed here`, metadata: new Metadata() }),
    });
  };
}

/** For every gRPC client of the project (generated clients, LedgerClient, RiskClient). */
export function channelCredentials(config: GrpcTlsConfig): ChannelCredentials {
  return credentialsOf(config).channel;
}

function credentialsOf(config: GrpcTlsConfig): GrpcCredentials {
  let made = loaded.get(config);
  if (!made) {
    made = grpcTlsEnabled(config) ? mutualTls(config) : { server: ServerCredentials.createInsecure(), channel: credentials.createInsecure() };
    loaded.set(config, made);
  }
  return made;
}

function mutualTls(config: GrpcTlsConfig): GrpcCredentials {
  const ca = readPem('GRPC_TLS_CA', config.GRPC_TLS_CA);
  const cert = readPem('GRPC_TLS_CERT', config.GRPC_TLS_CERT);
  const key = readPem('GRPC_TLS_KEY', config.GRPC_TLS_KEY);
  checkPair(config, ca, cert, key);
  const serverName = config.GRPC_TLS_SERVER_NAME;
  return {
    // true: a client without a certificate signed by the CA is refused during the handshake.
    server: ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true),
    channel: credentials.createSsl(ca, key, cert, serverName ? { checkServerIdentity: (_host, peer) => checkServerIdentity(serverName, peer) } : {}),
  };
}

function readPem(name: string, path: string | undefined): Buffer {
  if (path === undefined) throw new ConfigError([`${name}: not set, but another GRPC_TLS_ file is (set all of GRPC_TLS_CA, GRPC_TLS_CERT, GRPC_TLS_KEY, or none)`]);
  try {
    return readFileSync(path);
  } catch (error) {
    throw new ConfigError([`${name}=${JSON.stringify(path)}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`]);
  }
}

/** Each file holds what its variable says, and the key belongs to the certificate: checked here, not at the first call. */
function checkPair(config: GrpcTlsConfig, ca: Buffer, cert: Buffer, key: Buffer): void {
  const parse = <T>(name: keyof GrpcTlsConfig, what: string, read: () => T): T => {
    try {
      return read();
    } catch (error) {
      throw new ConfigError([`${name}=${JSON.stringify(config[name])}: not ${what} (${error instanceof Error ? error.message : String(error)})`]);
    }
  };
  parse('GRPC_TLS_CA', 'a PEM certificate', () => new X509Certificate(ca));
  const certificate = parse('GRPC_TLS_CERT', 'a PEM certificate', () => new X509Certificate(cert));
  const privateKey = parse('GRPC_TLS_KEY', 'a PEM private key', () => createPrivateKey(key));
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new ConfigError([`GRPC_TLS_KEY=${JSON.stringify(config.GRPC_TLS_KEY)}: not the private key of GRPC_TLS_CERT=${JSON.stringify(config.GRPC_TLS_CERT)}`]);
  }
}
