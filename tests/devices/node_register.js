'use strict';
// Registers one device with the official Azure IoT DPS Node device SDK and prints exactly one JSON
// line on stdout: {"ok":true,"result":{...}} or {"ok":false,"error":{...}}. Driven by
// test_device_sdks.py; the server's root CA is trusted through NODE_EXTRA_CA_CERTS.
//
// Arguments (all --name value):
//   --host IP --id-scope SCOPE --registration-id ID --transport http|mqtt|mqttws|amqp|amqpws
//   and either --symmetric-key KEY, or --cert FILE --key FILE (the cert file may hold the chain)
//   --timeout-ms N (default 60000)
const fs = require('fs');

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
      throw new Error('bad argument: ' + argv[i]);
    }
    out[argv[i].slice(2)] = argv[i + 1];
  }
  return out;
}

let done = false;
function finish(obj) {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify(obj) + '\n');
  // The MQTT transport may keep the socket open a little; the answer is out, so leave now.
  process.exit(0);
}

function describeError(err) {
  if (!err) return { message: String(err) };
  const e = {
    name: err.name || (err.constructor && err.constructor.name) || 'Error',
    message: err.message || String(err),
  };
  for (const k of ['code', 'reason', 'statusCode', 'responseBody', 'errorCode', 'condition', 'description']) {
    if (err[k] !== undefined) e[k] = err[k];
  }
  if (err.response && err.response.statusCode !== undefined) e.statusCode = err.response.statusCode;
  if (err.result !== undefined) e.result = err.result;
  if (err.transportError) e.transportError = describeError(err.transportError);
  if (err.amqpError) e.amqpError = describeError(err.amqpError);
  return e;
}

function main() {
  const a = parseArgs(process.argv.slice(2));
  const timeoutMs = parseInt(a['timeout-ms'] || '60000', 10);
  setTimeout(() => finish({ ok: false, error: { name: 'Timeout', message: 'no answer in ' + timeoutMs + ' ms' } }), timeoutMs).unref();

  const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
  let transport;
  if (a.transport === 'http') {
    const { Http } = require('azure-iot-provisioning-device-http');
    transport = new Http();
  } else if (a.transport === 'mqttws') {
    const { MqttWs } = require('azure-iot-provisioning-device-mqtt');
    transport = new MqttWs();
  } else if (a.transport === 'mqtt') {
    const { Mqtt } = require('azure-iot-provisioning-device-mqtt');
    transport = new Mqtt();
  } else if (a.transport === 'amqp') {
    const { Amqp } = require('azure-iot-provisioning-device-amqp');
    transport = new Amqp();
  } else if (a.transport === 'amqpws') {
    const { AmqpWs } = require('azure-iot-provisioning-device-amqp');
    transport = new AmqpWs();
  } else {
    throw new Error('--transport must be http, mqtt, mqttws, amqp or amqpws');
  }

  let security;
  if (a['symmetric-key']) {
    const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
    security = new SymmetricKeySecurityClient(a['registration-id'], a['symmetric-key']);
  } else if (a.cert && a.key) {
    const { X509Security } = require('azure-iot-security-x509');
    security = new X509Security(a['registration-id'], {
      cert: fs.readFileSync(a.cert, 'utf8'),
      key: fs.readFileSync(a.key, 'utf8'),
    });
  } else {
    throw new Error('need --symmetric-key, or --cert and --key');
  }

  const client = ProvisioningDeviceClient.create(a.host, a['id-scope'], transport, security);
  client.register((err, result) => {
    if (err) {
      finish({ ok: false, error: describeError(err) });
    } else {
      finish({ ok: true, result });
    }
  });
}

try {
  main();
} catch (err) {
  finish({ ok: false, error: describeError(err) });
}
