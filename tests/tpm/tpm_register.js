// Registers a TPM device with the official Azure IoT DPS Node SDK, unmodified:
// ProvisioningDeviceClient + azure-iot-provisioning-device-http (or -amqp) + TpmSecurityClient,
// on a software TPM (swtpm) reached over TCP. Driven by tests/devices/test_tpm.py; the server's
// root CA is trusted through NODE_EXTRA_CA_CERTS.
//
//   node tpm_register.js <dps-host> <idScope> <tpm-host> <tpm-port> <http|amqp|amqpws> <sign-b64> [timeout-ms]
//       -> {"ok": true, "result": {...}, "signature": b64}  (signWithIdentity(sign) after
//          registering: the key the final result handed over)
//       -> {"ok": false, "error": {...}}
// One line of JSON on stdout either way.
'use strict';

const { Tpm, TpmTcpDevice } = require('tss.js');
const { TpmSecurityClient } = require('azure-iot-security-tpm');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');

let done = false;
function finish(obj) {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(0));
}

function describe(err) {
  if (!err) return { message: String(err) };
  const e = { name: err.name || 'Error', message: err.message || String(err) };
  for (const k of ['statusCode', 'responseBody', 'errorCode', 'reason']) {
    if (err[k] !== undefined) e[k] = err[k];
  }
  if (err.response && err.response.statusCode !== undefined) e.statusCode = err.response.statusCode;
  if (err.result !== undefined) e.result = err.result;
  if (err.transportError) e.transportError = describe(err.transportError);
  return e;
}

function main() {
  const [dpsHost, idScope, tpmHost, tpmPortText, transportName, sign, timeoutText] = process.argv.slice(2);
  const timeoutMs = Number(timeoutText || '80000');
  const tpmPort = Number(tpmPortText);
  if (!dpsHost || !idScope || !tpmHost || !Number.isInteger(tpmPort) || !sign) {
    throw new Error('usage: tpm_register.js <dps-host> <idScope> <tpm-host> <tpm-port> <http|amqp|amqpws> <sign-b64>');
  }
  setTimeout(() => finish({ ok: false, error: { name: 'Timeout', message: 'no answer in ' + timeoutMs + ' ms' } }), timeoutMs).unref();
  let transport;
  if (transportName === 'http') {
    transport = new (require('azure-iot-provisioning-device-http').Http)();
  } else if (transportName === 'amqp') {
    transport = new (require('azure-iot-provisioning-device-amqp').Amqp)();
  } else if (transportName === 'amqpws') {
    transport = new (require('azure-iot-provisioning-device-amqp').AmqpWs)();
  } else {
    throw new Error('transport must be http, amqp or amqpws');
  }
  const tpm = new Tpm(true, tpmHost, tpmPort);
  tpm.device = new TpmTcpDevice(tpmHost, tpmPort, true);
  const security = new TpmSecurityClient(undefined, tpm);
  const client = ProvisioningDeviceClient.create(dpsHost, idScope, transport, security);
  client.register((err, result) => {
    if (err) return finish({ ok: false, error: describe(err) });
    security.signWithIdentity(Buffer.from(sign, 'base64'), (err2, sig) => {
      if (err2) return finish({ ok: false, error: describe(err2), result });
      finish({ ok: true, result, signature: sig.toString('base64') });
    });
  });
}

try {
  main();
} catch (e) {
  finish({ ok: false, error: describe(e) });
}
