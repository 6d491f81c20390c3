// The official Node TPM client (azure-iot-security-tpm, unmodified) on a software TPM (swtpm),
// driven by the Rust tests in crates/dps-attest/tests/tpm_node.rs.
//
//   node tpm_client.js <host> <port> keys
//       -> {"endorsementKey": b64, "storageRootKey": b64, "registrationId": "..."}
//          (the client creates its EK and SRK at 0x81010001 / 0x81000001 when absent)
//   node tpm_client.js <host> <port> activate <blob-b64> <data-b64>
//       -> {"signature": b64}: activateIdentityKey(blob), then signWithIdentity(data)
//   node tpm_client.js <host> <port> sign <data-b64>
//       -> {"signature": b64}: signWithIdentity(data) with the key already in the TPM
//   node tpm_client.js <host> <port> sasl <idScope> <registrationId> <challenges> <data-b64>
//       -> {"init": b64, "responses": [b64...]}: the AMQP transport's SaslTpm mechanism, fed
//          the one-byte first challenge and then <challenges> (comma-separated base64); its
//          final callback activates the reassembled blob and answers "sig=" + signWithIdentity(data)
//
// On failure: {"error": message} and exit code 1. One line of JSON on stdout either way.
//
// Reaching swtpm over TCP: tss.js's TpmTcpDevice with linuxTrm = true speaks plain
// SEND_COMMAND framing once its user-mode-TRM probe fails, which is what swtpm's --server
// socket understands. `new Tpm(true, host, port)` alone would send the Microsoft simulator's
// handshake (command 15), which swtpm does not answer, so the device is replaced.
'use strict';

const { Tpm, TpmTcpDevice } = require('tss.js');
const { TpmSecurityClient } = require('azure-iot-security-tpm');
const { SaslTpm } = require('azure-iot-provisioning-device-amqp/dist/sasl_tpm.js');

function out(obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code));
}

function fail(err) {
  out({ error: err && err.message ? err.message : String(err) }, 1);
}

function client(host, port) {
  const tpm = new Tpm(true, host, port);
  tpm.device = new TpmTcpDevice(host, port, true);
  return new TpmSecurityClient(undefined, tpm);
}

function call(fn) {
  return new Promise((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));
}

async function main() {
  const [host, portText, cmd, ...args] = process.argv.slice(2);
  const port = Number(portText);
  if (!host || !Number.isInteger(port) || !cmd) {
    throw new Error('usage: tpm_client.js <host> <port> keys|activate|sign ...');
  }
  const c = client(host, port);
  if (cmd === 'keys') {
    const ek = await call((cb) => c.getEndorsementKey(cb));
    const srk = await call((cb) => c.getStorageRootKey(cb));
    const registrationId = await call((cb) => c.getRegistrationId(cb));
    return { endorsementKey: ek.toString('base64'), storageRootKey: srk.toString('base64'), registrationId };
  }
  if (cmd === 'activate') {
    const [blob, data] = args;
    await call((cb) => c.activateIdentityKey(Buffer.from(blob, 'base64'), cb));
    const sig = await call((cb) => c.signWithIdentity(Buffer.from(data, 'base64'), cb));
    return { signature: sig.toString('base64') };
  }
  if (cmd === 'sasl') {
    const [idScope, registrationId, challenges, data] = args;
    const ek = await call((cb) => c.getEndorsementKey(cb));
    const srk = await call((cb) => c.getStorageRootKey(cb));
    const sasl = new SaslTpm(idScope, registrationId, ek, srk, (blob, cb) => {
      c.activateIdentityKey(blob, (err) => {
        if (err) return cb(err);
        c.signWithIdentity(Buffer.from(data, 'base64'), (e, sig) => (e ? cb(e) : cb(null, 'sig=' + sig.toString('base64'))));
      });
    });
    const init = await call((cb) => sasl.start(cb));
    const responses = [];
    for (const ch of [Buffer.from([0]), ...challenges.split(',').map((x) => Buffer.from(x, 'base64'))]) {
      responses.push((await call((cb) => sasl.step(ch, cb))).toString('base64'));
    }
    return { init: init.toString('base64'), hostname: sasl.hostname, responses };
  }
  if (cmd === 'sign') {
    const sig = await call((cb) => c.signWithIdentity(Buffer.from(args[0], 'base64'), cb));
    return { signature: sig.toString('base64') };
  }
  throw new Error('unknown command ' + cmd);
}

main().then((r) => out(r, 0), fail);
