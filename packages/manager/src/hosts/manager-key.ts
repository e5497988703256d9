/**
 * The manager's Ed25519 signing key. Requests the manager sends to agents are signed with it;
 * agents get the public key when they register, so no shared secret sits in the datastore.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface ManagerKey {
  privateKey: KeyObject;
  publicKeyPem: string;
}

export function loadOrCreateManagerKey(dataDir: string): ManagerKey {
  const file = path.join(dataDir, 'manager-key.pem');
  let privateKey: KeyObject;
  if (fs.existsSync(file)) {
    privateKey = createPrivateKey(fs.readFileSync(file));
  } else {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    privateKey = generateKeyPairSync('ed25519').privateKey;
    fs.writeFileSync(file, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
  }
  const publicKeyPem = createPublicKey(privateKey).export({ format: 'pem', type: 'spki' }).toString();
  return { privateKey, publicKeyPem };
}
