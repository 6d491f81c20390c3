// Looks a device up in an IoT hub with the OFFICIAL Node hub service SDK (azure-iothub Registry):
// the identity, the twin, and whether the listing (GET /devices/) and the query
// (SELECT * FROM devices) hold it. Prints one JSON line: {"ok": true, "device", "twin", "listed",
// "queried"} or {"ok": false, "error"}. Driven by test_hub.py in its own process.
//
// Usage: node node_hub.js --connection-string CS --device-id ID   (NODE_EXTRA_CA_CERTS: the root)
'use strict';

const { Registry } = require('azure-iothub');

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`--${name} is required`);
  return process.argv[i + 1];
}

async function main() {
  const registry = Registry.fromConnectionString(arg('connection-string'));
  const id = arg('device-id');
  const device = (await registry.get(id)).responseBody;
  const twin = (await registry.getTwin(id)).responseBody;
  const list = (await registry.list()).responseBody;
  const query = registry.createQuery('SELECT * FROM devices', 1000);
  const page = await query.nextAsTwin();
  return {
    ok: true,
    device,
    twin: { tags: twin.tags, desired: twin.properties.desired },
    listed: list.some((d) => d.deviceId === id),
    queried: page.result.some((t) => t.deviceId === id),
  };
}

main()
  .then((r) => console.log(JSON.stringify(r)))
  .catch((e) => {
    console.log(JSON.stringify({ ok: false, error: { name: e.name, message: e.message, status: e.response && e.response.statusCode } }));
  });
