import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** PEM files on disk, as the GRPC_TLS_* variables name them. */
export interface CertificateFiles {
  cert: string;
  key: string;
}

export interface TestCertificates {
  /** The CA every service trusts (GRPC_TLS_CA). */
  ca: string;
  /** A service's certificate: server and client, for 127.0.0.1 and localhost. */
  service: CertificateFiles;
  /** An operator's (a CLI's) certificate: client only, no host names. */
  operator: CertificateFiles;
  /** Another CA, and a service certificate signed by it: trusted by nobody here. */
  foreignCa: string;
  foreign: CertificateFiles;
  /** The GRPC_TLS_* settings of a service holding `files` (the service certificate unless given). */
  env(files?: CertificateFiles): Record<string, string>;
  remove(): Promise<void>;
}

/** Keys are P-256: fast to generate and what production deployments use. */
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

const SERVICE_EXTENSIONS = [
  'basicConstraints = critical, CA:FALSE',
  'keyUsage = critical, digitalSignature',
  'extendedKeyUsage = serverAuth, clientAuth',
  'subjectAltName = IP:127.0.0.1, DNS:localhost',
  'authorityKeyIdentifier = keyid',
];
const OPERATOR_EXTENSIONS = ['basicConstraints = critical, CA:FALSE', 'keyUsage = critical, digitalSignature', 'extendedKeyUsage = clientAuth', 'authorityKeyIdentifier = keyid'];

/**
 * Certificates made for one test run with the openssl command line (Debian's /usr/bin/openssl) in a fresh
 * temporary directory, valid for a day: nothing secret is ever committed, and nothing outlives the run.
 */
export async function makeTestCertificates(): Promise<TestCertificates> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ledgerline-tls-'));
  const file = (name: string) => path.join(dir, name);

  const authority = async (name: string): Promise<{ cert: string; key: string }> => {
    const config = file(`${name}.cnf`);
    await writeFile(
      config,
      ['[req]', 'distinguished_name = dn', 'x509_extensions = ca', 'prompt = no', '[dn]', `CN = ${name}`, '[ca]', 'basicConstraints = critical, CA:TRUE', 'keyUsage = critical, keyCertSign, cRLSign', 'subjectKeyIdentifier = hash', ''].join('\n'),
    );
    await run('openssl', ['req', '-x509', ...EC_KEY, '-config', config, '-days', '1', '-keyout', file(`${name}.key`), '-out', file(`${name}.pem`)]);
    return { cert: file(`${name}.pem`), key: file(`${name}.key`) };
  };

  const signed = async (name: string, issuer: { cert: string; key: string }, extensions: string[]): Promise<CertificateFiles> => {
    const request = file(`${name}.cnf`);
    await writeFile(request, ['[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', `CN = ${name}`, ''].join('\n'));
    await writeFile(file(`${name}.ext`), `${extensions.join('\n')}\n`);
    await run('openssl', ['req', '-new', ...EC_KEY, '-config', request, '-keyout', file(`${name}.key`), '-out', file(`${name}.csr`)]);
    await run('openssl', ['x509', '-req', '-in', file(`${name}.csr`), '-CA', issuer.cert, '-CAkey', issuer.key, '-set_serial', `0x${randomBytes(16).toString('hex')}`, '-days', '1', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`)]);
    return { cert: file(`${name}.pem`), key: file(`${name}.key`) };
  };

  const ca = await authority('ledgerline-test-ca');
  const foreignCa = await authority('foreign-test-ca');
  const service = await signed('service', ca, SERVICE_EXTENSIONS);
  return {
    ca: ca.cert,
    service,
    operator: await signed('operator', ca, OPERATOR_EXTENSIONS),
    foreignCa: foreignCa.cert,
    foreign: await signed('foreign-service', foreignCa, SERVICE_EXTENSIONS),
    env: (files = service) => ({ GRPC_TLS_CA: ca.cert, GRPC_TLS_CERT: files.cert, GRPC_TLS_KEY: files.key }),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}
