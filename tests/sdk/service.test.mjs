// End-to-end tests of the OpenDPS service API (api-version 2021-10-01) driven by Microsoft's
// official Node service SDK, `azure-iot-provisioning-service`, unchanged.
//
// One real `opendps serve` runs for this file on its own loopback address and on port 443 (the
// SDK always talks to https://<HostName>:443). The SDK sends its requests through
// `https.request` with the global agent, so the server's built-in root CA is trusted by adding it
// to `https.globalAgent.options.ca`; nothing else about the SDK is altered.
//
// Run: cargo build -p opendps && cd tests/sdk && npm ci --ignore-scripts && node --test
// Env: OPENDPS_BIN (server binary; default ../../target/debug/opendps from this file),
//      OPENDPS_SDK_IP (loopback address to listen on; default 127.0.0.61).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import provisioningService from 'azure-iot-provisioning-service';

const { ProvisioningServiceClient } = provisioningService;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.OPENDPS_BIN || path.resolve(HERE, '../../target/debug/opendps');
const IP = process.env.OPENDPS_SDK_IP || '127.0.0.61';
const START_TIMEOUT_MS = 60_000;

let server; // the child process
let dataDir;
let serverOutput = ''; // everything the server printed, shown when it fails to start
let connectionString;
let client;
let certDir;

// ---------------------------------------------------------------------------------------------
// The server

function startServer() {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'opendps-sdk-'));
  assert.ok(fs.existsSync(BIN), `server binary ${BIN} missing: run cargo build -p opendps first`);
  server = spawn(
    BIN,
    ['serve', '--data-dir', dataDir, '--listen-address', IP, '--mqtt-port', '0', '--amqp-port', '0'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
  );
  server.stderr.on('data', (chunk) => { serverOutput += chunk; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`server printed no connection string in ${START_TIMEOUT_MS} ms:\n${serverOutput}`));
    }, START_TIMEOUT_MS);
    server.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (code ${code}, signal ${signal}):\n${serverOutput}`));
    });
    // Keep reading stdout for the server's whole life so its pipe never fills up.
    const lines = readline.createInterface({ input: server.stdout });
    lines.on('line', (raw) => {
      // eslint-disable-next-line no-control-regex
      const line = raw.replace(/\x1b\[[0-9;]*m/g, '');
      serverOutput += line + '\n';
      // Off a terminal the banner names the command that prints the connection string.
      if (/^\s*service connection string:/.test(line)) {
        clearTimeout(timer);
        resolve(execFileSync(BIN, ['dps', 'connection-string', '--data-dir', dataDir, '--query', 'connectionString', '-o', 'tsv'],
          { encoding: 'utf8' }).trim());
      }
    });
  });
}

async function stopServer() {
  if (server && server.exitCode === null && server.signalCode === null) {
    const exited = once(server, 'exit');
    server.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(resolve, 15_000, 'timeout'); });
    const first = await Promise.race([exited, timeout]);
    clearTimeout(timer);
    if (first === 'timeout') {
      server.kill('SIGKILL');
      await exited;
      assert.fail(`server did not stop within 15 s of SIGTERM:\n${serverOutput}`);
    }
  }
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  if (certDir) fs.rmSync(certDir, { recursive: true, force: true });
}

before(async () => {
  connectionString = await startServer();
  https.globalAgent.options.ca = [fs.readFileSync(path.join(dataDir, 'pki', 'root.pem'))];
  client = ProvisioningServiceClient.fromConnectionString(connectionString);
  certDir = fs.mkdtempSync(path.join(os.tmpdir(), 'opendps-sdk-certs-'));
});

after(stopServer);

// ---------------------------------------------------------------------------------------------
// Helpers

let certCount = 0;

/** A fresh self-signed RSA certificate made by the openssl CLI (Node has no X.509 builder). */
function selfSignedCert(cn, { ca }) {
  certCount += 1;
  const keyFile = path.join(certDir, `${certCount}.key`);
  const certFile = path.join(certDir, `${certCount}.pem`);
  const ext = ca
    ? ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']
    : ['-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'keyUsage=critical,digitalSignature'];
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-days', '2',
    '-keyout', keyFile, '-out', certFile, ...ext,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  const pem = fs.readFileSync(certFile, 'utf8');
  return { pem, x509: new X509Certificate(pem) };
}

/** Upper-case hex without colons, as DPS shows thumbprints. */
const thumb = (fingerprint) => fingerprint.replaceAll(':', '').toUpperCase();

/** The DPS error body of an SDK error (the SDK keeps the raw body as `responseBody`). */
function errorBody(err) {
  assert.ok(err.responseBody, `error carries no response body: ${err}`);
  return JSON.parse(err.responseBody);
}

/**
 * Asserts that `promise` fails with HTTP `status` and, if given, DPS `errorCode`; every DPS error
 * body has errorCode, trackingId, message and timestampUtc. Returns the error.
 */
async function expectHttpError(promise, status, errorCode) {
  let caught;
  await assert.rejects(promise, (err) => {
    caught = err;
    return true;
  });
  assert.ok(caught.response, `expected an HTTP error, got ${caught && caught.stack}`);
  assert.equal(caught.response.statusCode, status, `status; body: ${caught.responseBody}`);
  const body = errorBody(caught);
  for (const field of ['errorCode', 'trackingId', 'message', 'timestampUtc']) {
    assert.ok(field in body, `error body has ${field}: ${caught.responseBody}`);
  }
  assert.equal(typeof body.errorCode, 'number');
  if (errorCode !== undefined) {
    assert.equal(body.errorCode, errorCode, `errorCode; body: ${caught.responseBody}`);
  } else {
    // DPS error codes are the HTTP status followed by three digits.
    assert.equal(Math.floor(body.errorCode / 1000), status, `errorCode; body: ${caught.responseBody}`);
  }
  return caught;
}

/**
 * `runBulkEnrollmentOperation` through its callback. SDK quirk: its promise form never settles,
 * because the method only calls back when the caller passed a callback of its own.
 */
function runBulk(operation) {
  return new Promise((resolve, reject) => {
    client.runBulkEnrollmentOperation(operation, (err, result, response) => {
      if (err) reject(err);
      else resolve({ result, response });
    });
  });
}

/**
 * The next page of `query` through its callback form, which sends the stored continuation token.
 * SDK quirk: the promise form `query.next()` with no argument sends NO token (it takes the
 * missing argument as the token), so it would return the first page forever.
 */
function nextPage(query) {
  return new Promise((resolve, reject) => {
    query.next((err, items, response) => {
      if (err) reject(err);
      else resolve({ items, headers: response.headers });
    });
  });
}

/** Runs `query` page by page until `hasMoreResults` is false; returns the pages. */
async function allPages(query, maxPages = 100) {
  const pages = [];
  while (query.hasMoreResults) {
    assert.ok(pages.length < maxPages, 'query does not end');
    pages.push(await nextPage(query));
  }
  return pages;
}

const symmetricKeyEnrollment = (registrationId, extra = {}) => ({
  registrationId,
  attestation: { type: 'symmetricKey' },
  ...extra,
});

const isBase64Key = (key) => typeof key === 'string' && Buffer.from(key, 'base64').length >= 16;

// ---------------------------------------------------------------------------------------------
// Individual enrollments

test('individual enrollment, symmetric key: create, get, keys, etag update, delete', async () => {
  const id = 'sdk-sym-1';

  // Create without keys: the server generates them and, as DPS, returns them in the response.
  const created = await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id));
  assert.equal(created.httpResponse.statusCode, 200);
  const enrollment = created.responseBody;
  assert.equal(enrollment.registrationId, id);
  assert.equal(enrollment.attestation.type, 'symmetricKey');
  assert.ok(isBase64Key(enrollment.attestation.symmetricKey?.primaryKey), 'the create response carries the keys');
  assert.equal(enrollment.provisioningStatus, 'enabled');
  assert.ok(enrollment.etag, 'created enrollment has an etag');
  assert.ok(enrollment.createdDateTimeUtc && enrollment.lastUpdatedDateTimeUtc);

  // Get: same record, no keys.
  const got = await client.getIndividualEnrollment(id);
  assert.equal(got.httpResponse.statusCode, 200);
  assert.equal(got.responseBody.registrationId, id);
  assert.equal(got.responseBody.etag, enrollment.etag);
  assert.equal(got.responseBody.attestation.type, 'symmetricKey');
  assert.equal(got.responseBody.attestation.symmetricKey?.primaryKey, undefined);
  assert.equal(got.responseBody.attestation.symmetricKey?.secondaryKey, undefined);

  // The attestation mechanism carries the generated keys.
  const att = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody;
  assert.equal(att.type, 'symmetricKey');
  assert.deepEqual(att.symmetricKey, enrollment.attestation.symmetricKey, 'the keys the create response showed');
  assert.ok(isBase64Key(att.symmetricKey.primaryKey), `primary key ${att.symmetricKey.primaryKey}`);
  assert.ok(isBase64Key(att.symmetricKey.secondaryKey), `secondary key ${att.symmetricKey.secondaryKey}`);
  assert.notEqual(att.symmetricKey.primaryKey, att.symmetricKey.secondaryKey);

  // Update with the current etag (the SDK sends it as If-Match): GET, modify, PUT.
  const changed = {
    ...got.responseBody,
    provisioningStatus: 'disabled',
    initialTwin: { tags: { floor: 3 }, properties: { desired: { telemetryInterval: 30 } } },
  };
  const updated = (await client.createOrUpdateIndividualEnrollment(changed)).responseBody;
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.deepEqual(updated.initialTwin.tags, { floor: 3 });
  assert.equal(updated.initialTwin.properties.desired.telemetryInterval, 30);
  assert.ok(updated.etag && updated.etag !== enrollment.etag, 'update gives a new etag');
  assert.equal(updated.createdDateTimeUtc, enrollment.createdDateTimeUtc);

  // The PUT omitted the keys, so they were kept.
  const attAfter = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody;
  assert.deepEqual(attAfter.symmetricKey, att.symmetricKey);

  // An update with the stale etag is refused.
  const stale = { ...changed, etag: enrollment.etag, provisioningStatus: 'enabled' };
  const staleErr = await expectHttpError(client.createOrUpdateIndividualEnrollment(stale), 412);
  assert.equal(staleErr.name, 'InvalidEtagError');
  assert.equal((await client.getIndividualEnrollment(id)).responseBody.provisioningStatus, 'disabled');

  // Delete with the stale etag is refused too; with the current one it goes through.
  await expectHttpError(client.deleteIndividualEnrollment(id, enrollment.etag), 412);
  await client.deleteIndividualEnrollment(id, updated.etag);

  // Gone.
  await expectHttpError(client.getIndividualEnrollment(id), 404, 404201);
  await expectHttpError(client.getIndividualEnrollmentAttestationMechanism(id), 404, 404201);
  await expectHttpError(client.deleteIndividualEnrollment(id), 404, 404201);
});

test('individual enrollment, symmetric key: keys given by the caller are kept', async () => {
  const id = 'sdk-sym-given-keys';
  const primaryKey = Buffer.alloc(32, 1).toString('base64');
  const secondaryKey = Buffer.alloc(32, 2).toString('base64');
  const created = (await client.createOrUpdateIndividualEnrollment({
    registrationId: id,
    deviceId: 'device-with-keys',
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
  })).responseBody;
  assert.equal(created.deviceId, 'device-with-keys');
  assert.deepEqual(created.attestation.symmetricKey, { primaryKey, secondaryKey }, 'the response shows the keys kept');
  const att = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody;
  assert.deepEqual(att.symmetricKey, { primaryKey, secondaryKey });

  // Delete by enrollment object (the SDK takes registrationId and etag from it).
  await client.deleteIndividualEnrollment(created);
  await expectHttpError(client.getIndividualEnrollment(id), 404, 404201);
});

test('individual enrollment: ids with . _ : and upper case', async () => {
  const id = 'Sdk.Dot_Under:Colon-1';
  const created = (await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id))).responseBody;
  assert.equal(created.registrationId, id);
  assert.equal((await client.getIndividualEnrollment(id)).responseBody.registrationId, id);
  // Ids are case-insensitive, as in DPS.
  assert.equal((await client.getIndividualEnrollment(id.toLowerCase())).responseBody.registrationId, id);
  await client.deleteIndividualEnrollment(id.toUpperCase());
  await expectHttpError(client.getIndividualEnrollment(id), 404, 404201);
});

test('individual enrollment: every field round-trips', async () => {
  const id = 'sdk-all-fields';
  const sent = symmetricKeyEnrollment(id, {
    deviceId: 'sdk-all-fields-device',
    initialTwin: { tags: { a: { b: [1, 2] } }, properties: { desired: { x: { y: 'z' } } } },
    capabilities: { iotEdge: true },
    provisioningStatus: 'disabled',
    reprovisionPolicy: { updateHubAssignment: false, migrateDeviceData: false },
    allocationPolicy: 'hashed',
    optionalDeviceInformation: { version: '1', properties: { k: 'v' } },
  });
  const created = (await client.createOrUpdateIndividualEnrollment(sent)).responseBody;
  const got = (await client.getIndividualEnrollment(id)).responseBody;
  for (const e of [created, got]) {
    for (const field of ['deviceId', 'initialTwin', 'capabilities', 'provisioningStatus', 'reprovisionPolicy',
      'allocationPolicy', 'optionalDeviceInformation']) {
      assert.deepEqual(e[field], sent[field], field);
    }
  }
  await client.deleteIndividualEnrollment(id);
});

test('individual enrollment, X.509: create and get show the certificate info', async () => {
  const id = 'sdk-x509-1';
  const cert = selfSignedCert('device-x509', { ca: false });
  const created = (await client.createOrUpdateIndividualEnrollment({
    registrationId: id,
    attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.pem } } } },
  })).responseBody;
  assert.equal(created.attestation.type, 'x509');

  const got = (await client.getIndividualEnrollment(id)).responseBody;
  const primary = got.attestation.x509.clientCertificates.primary;
  assert.equal(primary.certificate, undefined, 'GET omits the certificate body');
  assert.match(primary.info.subjectName, /CN=device-x509/);
  assert.match(primary.info.issuerName, /CN=device-x509/);
  assert.equal(primary.info.sha1Thumbprint.toUpperCase(), thumb(cert.x509.fingerprint));
  assert.equal(primary.info.sha256Thumbprint.toUpperCase(), thumb(cert.x509.fingerprint256));
  assert.equal(primary.info.serialNumber.toUpperCase(), cert.x509.serialNumber.toUpperCase());
  assert.equal(primary.info.version, 3);
  assert.equal(new Date(primary.info.notAfterUtc).getTime(), new Date(cert.x509.validTo).getTime());
  assert.equal(new Date(primary.info.notBeforeUtc).getTime(), new Date(cert.x509.validFrom).getTime());

  // The attestation mechanism gives the certificate back.
  const att = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody;
  assert.equal(att.type, 'x509');
  const returned = new X509Certificate(att.x509.clientCertificates.primary.certificate);
  assert.equal(returned.fingerprint256, cert.x509.fingerprint256);

  // A GET-modify-PUT round trip (no certificate body in it) keeps the certificate.
  const updated = (await client.createOrUpdateIndividualEnrollment({ ...got, provisioningStatus: 'disabled' })).responseBody;
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.equal(
    updated.attestation.x509.clientCertificates.primary.info.sha256Thumbprint.toUpperCase(),
    thumb(cert.x509.fingerprint256),
  );

  await client.deleteIndividualEnrollment(id);
  await expectHttpError(client.getIndividualEnrollment(id), 404, 404201);
});

test('individual enrollment: a malformed certificate is refused with 400', async () => {
  await expectHttpError(client.createOrUpdateIndividualEnrollment({
    registrationId: 'sdk-x509-bad',
    attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: 'not a certificate' } } } },
  }), 400);
  await expectHttpError(client.getIndividualEnrollment('sdk-x509-bad'), 404, 404201);
});

// ---------------------------------------------------------------------------------------------
// Enrollment groups

test('enrollment group, symmetric key: create, get, keys, etag update, delete', async () => {
  const id = 'sdk-group-sym';
  const created = (await client.createOrUpdateEnrollmentGroup({
    enrollmentGroupId: id,
    attestation: { type: 'symmetricKey' },
  })).responseBody;
  assert.equal(created.enrollmentGroupId, id);
  assert.equal(created.attestation.type, 'symmetricKey');
  assert.ok(isBase64Key(created.attestation.symmetricKey?.primaryKey), 'the create response carries the keys');
  assert.ok(created.etag);

  const got = (await client.getEnrollmentGroup(id)).responseBody;
  assert.equal(got.enrollmentGroupId, id);
  assert.equal(got.etag, created.etag);
  assert.equal(got.attestation.symmetricKey?.primaryKey, undefined);

  const att = (await client.getEnrollmentGroupAttestationMechanism(id)).responseBody;
  assert.equal(att.type, 'symmetricKey');
  assert.ok(isBase64Key(att.symmetricKey.primaryKey));
  assert.ok(isBase64Key(att.symmetricKey.secondaryKey));

  const updated = (await client.createOrUpdateEnrollmentGroup({ ...got, provisioningStatus: 'disabled' })).responseBody;
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.notEqual(updated.etag, created.etag);
  assert.deepEqual((await client.getEnrollmentGroupAttestationMechanism(id)).responseBody.symmetricKey, att.symmetricKey);

  const staleErr = await expectHttpError(
    client.createOrUpdateEnrollmentGroup({ ...got, provisioningStatus: 'enabled' }), 412);
  assert.equal(staleErr.name, 'InvalidEtagError');
  await expectHttpError(client.deleteEnrollmentGroup(id, created.etag), 412);

  await client.deleteEnrollmentGroup(id, updated.etag);
  await expectHttpError(client.getEnrollmentGroup(id), 404, 404204);
  await expectHttpError(client.deleteEnrollmentGroup(id), 404, 404204);
});

test('enrollment group, X.509: a CA signing certificate is taken, a non-CA one refused', async () => {
  const id = 'sdk-group-x509';
  const ca = selfSignedCert('sdk-group-ca', { ca: true });
  const created = (await client.createOrUpdateEnrollmentGroup({
    enrollmentGroupId: id,
    attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: ca.pem } } } },
  })).responseBody;
  assert.equal(created.attestation.type, 'x509');

  const got = (await client.getEnrollmentGroup(id)).responseBody;
  const primary = got.attestation.x509.signingCertificates.primary;
  assert.equal(primary.certificate, undefined, 'GET omits the certificate body');
  assert.match(primary.info.subjectName, /CN=sdk-group-ca/);
  assert.equal(primary.info.sha1Thumbprint.toUpperCase(), thumb(ca.x509.fingerprint));
  assert.equal(primary.info.sha256Thumbprint.toUpperCase(), thumb(ca.x509.fingerprint256));

  const att = (await client.getEnrollmentGroupAttestationMechanism(id)).responseBody;
  assert.equal(
    new X509Certificate(att.x509.signingCertificates.primary.certificate).fingerprint256,
    ca.x509.fingerprint256,
  );

  // A signing certificate that is not a CA (basicConstraints CA:FALSE) is refused.
  const leaf = selfSignedCert('sdk-group-not-a-ca', { ca: false });
  const err = await expectHttpError(client.createOrUpdateEnrollmentGroup({
    enrollmentGroupId: 'sdk-group-x509-leaf',
    attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: leaf.pem } } } },
  }), 400);
  assert.equal(err.name, 'ArgumentError');
  await expectHttpError(client.getEnrollmentGroup('sdk-group-x509-leaf'), 404, 404204);

  await client.deleteEnrollmentGroup(got);
  await expectHttpError(client.getEnrollmentGroup(id), 404, 404204);
});

// ---------------------------------------------------------------------------------------------
// Queries

test('query individual enrollments, two per page', async () => {
  // Registration ids are case-insensitive; mixed case must not upset the continuation.
  const ids = ['sdk-q-1', 'SDK-Q-2', 'sdk-q-3', 'Sdk-Q-4', 'sdk-q-5', 'SDK-q-6'];
  for (const id of ids) await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id));

  const query = client.createIndividualEnrollmentQuery({ query: 'SELECT * FROM enrollments' }, 2);
  const pages = await allPages(query);
  assert.ok(pages.length >= 3, `${pages.length} pages`);
  const seen = [];
  for (const page of pages) {
    assert.ok(Array.isArray(page.items));
    assert.ok(page.items.length <= 2, `page of ${page.items.length}`);
    assert.equal(page.headers['x-ms-item-type']?.toLowerCase(), 'enrollment');
    for (const item of page.items) {
      assert.equal(item.attestation.symmetricKey?.primaryKey, undefined, 'query results carry no keys');
      seen.push(item.registrationId);
    }
  }
  assert.equal(new Set(seen).size, seen.length, `an id came twice: ${seen}`);
  for (const id of ids) assert.ok(seen.includes(id), `${id} missing from ${seen}`);
  // Only the last page ends the query.
  for (const page of pages.slice(0, -1)) assert.ok(page.headers['x-ms-continuation']);
  assert.equal(pages.at(-1).headers['x-ms-continuation'], undefined);

  // Without a page size everything comes in one page.
  const single = await allPages(client.createIndividualEnrollmentQuery({ query: 'SELECT * FROM enrollments' }));
  assert.equal(single.length, 1);
  assert.deepEqual(single[0].items.map((e) => e.registrationId).sort(), [...seen].sort());

  for (const id of ids) await client.deleteIndividualEnrollment(id);
});

// Every query form the official clients send, and WHERE on documented fields, page by page.
test('query with every client form and with WHERE, paged', async () => {
  const ids = ['sdk-where-1', 'sdk-where-2', 'sdk-where-3', 'sdk-where-4', 'sdk-where-5'];
  for (const [n, id] of ids.entries()) {
    await client.createOrUpdateIndividualEnrollment(
      symmetricKeyEnrollment(id, n % 2 === 0 ? { provisioningStatus: 'disabled' } : {}));
  }
  try {
    const where = (clause) => `SELECT * FROM enrollments WHERE registrationId >= 'sdk-where-' AND registrationId < 'sdk-wherf' AND ${clause}`;
    for (const text of ['*', 'SELECT *', 'SELECT * FROM enrollments', where("provisioningStatus != 'nothing'")]) {
      const seen = (await allPages(client.createIndividualEnrollmentQuery({ query: text }, 2)))
        .flatMap((p) => p.items.map((e) => e.registrationId));
      for (const id of ids) assert.ok(seen.includes(id), `${text}: ${id} missing`);
      assert.equal(new Set(seen).size, seen.length, `${text}: an id came twice`);
    }
    const pages = await allPages(client.createIndividualEnrollmentQuery({ query: where("provisioningStatus = 'disabled'") }, 1));
    const seen = pages.flatMap((p) => p.items.map((e) => e.registrationId));
    assert.deepEqual(seen, ['sdk-where-1', 'sdk-where-3', 'sdk-where-5'], 'the WHERE clause filters, paged');
    for (const page of pages) assert.ok(page.items.length <= 1);
    // What cannot be evaluated is a 400, never an unfiltered answer.
    await expectHttpError(
      nextPage(client.createIndividualEnrollmentQuery({ query: "SELECT * FROM enrollments WHERE attestation.symmetricKey.primaryKey = 'x'" })),
      400);
  } finally {
    for (const id of ids) await client.deleteIndividualEnrollment(id);
  }
});

test('query enrollment groups', async () => {
  const ids = ['sdk-gq-1', 'sdk-gq-2', 'sdk-gq-3'];
  for (const id of ids) {
    await client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: id, attestation: { type: 'symmetricKey' } });
  }
  const pages = await allPages(client.createEnrollmentGroupQuery({ query: 'SELECT * FROM enrollmentGroups' }, 2));
  assert.ok(pages.length >= 2, `${pages.length} pages`);
  const seen = [];
  for (const page of pages) {
    assert.ok(page.items.length <= 2);
    assert.equal(page.headers['x-ms-item-type']?.toLowerCase(), 'enrollmentgroup');
    for (const item of page.items) {
      assert.equal(item.attestation.symmetricKey?.primaryKey, undefined);
      seen.push(item.enrollmentGroupId);
    }
  }
  assert.equal(new Set(seen).size, seen.length, `an id came twice: ${seen}`);
  for (const id of ids) assert.ok(seen.includes(id), `${id} missing from ${seen}`);

  await client.createOrUpdateEnrollmentGroup(
    { enrollmentGroupId: 'sdk-gq-2', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' });
  const disabled = (await allPages(client.createEnrollmentGroupQuery(
    { query: "SELECT * FROM enrollmentGroups WHERE provisioningStatus = 'disabled'" }, 1)))
    .flatMap((p) => p.items.map((g) => g.enrollmentGroupId));
  assert.deepEqual(disabled, ['sdk-gq-2']);

  for (const id of ids) await client.deleteEnrollmentGroup(id);
});

// ---------------------------------------------------------------------------------------------
// Bulk

test('bulk enrollment operations: create, create again, update, updateIfMatchETag, delete', async () => {
  const ids = ['sdk-bulk-1', 'sdk-bulk-2', 'sdk-bulk-3'];
  const enrollments = ids.map((id) => symmetricKeyEnrollment(id));

  const created = await runBulk({ mode: 'create', enrollments });
  assert.equal(created.response.statusCode, 200);
  assert.equal(created.result.isSuccessful, true, JSON.stringify(created.result));
  assert.deepEqual(created.result.errors ?? [], []);
  for (const id of ids) {
    assert.equal((await client.getIndividualEnrollment(id)).responseBody.registrationId, id);
    const att = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody;
    assert.ok(isBase64Key(att.symmetricKey.primaryKey), 'bulk-created enrollment got keys');
  }

  // Creating one that exists fails for that one.
  const again = await runBulk({
    mode: 'create',
    enrollments: [symmetricKeyEnrollment('sdk-bulk-4'), symmetricKeyEnrollment(ids[0])],
  });
  assert.equal(again.result.isSuccessful, false, JSON.stringify(again.result));
  const failures = again.result.errors.filter((e) => e.registrationId === ids[0]);
  assert.equal(failures.length, 1, JSON.stringify(again.result));
  assert.equal(typeof failures[0].errorCode, 'number');
  assert.ok(failures[0].errorStatus, 'the error has a status text');
  assert.ok(!again.result.errors.some((e) => e.registrationId === 'sdk-bulk-4'));

  // Update: replaces existing ones and creates missing ones.
  const staleEtag = (await client.getIndividualEnrollment(ids[1])).responseBody.etag;
  const updated = await runBulk({
    mode: 'update',
    enrollments: [symmetricKeyEnrollment(ids[1], { provisioningStatus: 'disabled' }), symmetricKeyEnrollment('sdk-bulk-5')],
  });
  assert.equal(updated.result.isSuccessful, true, JSON.stringify(updated.result));
  assert.equal((await client.getIndividualEnrollment(ids[1])).responseBody.provisioningStatus, 'disabled');
  assert.equal((await client.getIndividualEnrollment('sdk-bulk-5')).responseBody.registrationId, 'sdk-bulk-5');

  // updateIfMatchETag: the current etag goes through, a stale one fails for that item only.
  const current = (await client.getIndividualEnrollment(ids[2])).responseBody;
  const ifMatch = await runBulk({
    mode: 'updateIfMatchETag',
    enrollments: [
      { ...current, provisioningStatus: 'disabled' },
      symmetricKeyEnrollment(ids[1], { etag: staleEtag }),
    ],
  });
  assert.equal(ifMatch.result.isSuccessful, false, JSON.stringify(ifMatch.result));
  assert.deepEqual(ifMatch.result.errors.map((e) => e.registrationId), [ids[1]], JSON.stringify(ifMatch.result));
  assert.equal(Math.floor(ifMatch.result.errors[0].errorCode / 1000), 412, JSON.stringify(ifMatch.result));
  assert.equal((await client.getIndividualEnrollment(ids[2])).responseBody.provisioningStatus, 'disabled');

  // More than 10 items are refused whole.
  const eleven = Array.from({ length: 11 }, (_, i) => symmetricKeyEnrollment(`sdk-bulk-many-${i}`));
  await expectHttpError(runBulk({ mode: 'create', enrollments: eleven }), 400);
  await expectHttpError(client.getIndividualEnrollment('sdk-bulk-many-0'), 404, 404201);

  // Delete them all.
  const all = [...ids, 'sdk-bulk-4', 'sdk-bulk-5'];
  const deleted = await runBulk({
    mode: 'delete',
    // Each item is a whole enrollment (attestation is a required field of one), as the SDKs send.
    enrollments: all.map((id) => symmetricKeyEnrollment(id)),
  });
  assert.equal(deleted.result.isSuccessful, true, JSON.stringify(deleted.result));
  for (const id of all) {
    await expectHttpError(client.getIndividualEnrollment(id), 404, 404201);
  }
});

// ---------------------------------------------------------------------------------------------
// Registration states

test('registration states: unknown registration 404, group query empty', async () => {
  await expectHttpError(client.getDeviceRegistrationState('nobody'), 404, 404202);
  await expectHttpError(client.deleteDeviceRegistrationState('nobody'), 404, 404202);

  const groupId = 'sdk-reg-group';
  await client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: groupId, attestation: { type: 'symmetricKey' } });
  const pages = await allPages(
    client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: 'SELECT * FROM c' }, groupId, 10));
  assert.equal(pages.length, 1);
  assert.deepEqual(pages[0].items, []);
  assert.equal(pages[0].headers['x-ms-item-type']?.toLowerCase(), 'deviceregistration');

  await expectHttpError(
    client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: 'SELECT * FROM c' }, 'sdk-no-such-group').next(),
    404, 404204);
  await client.deleteEnrollmentGroup(groupId);
});

// ---------------------------------------------------------------------------------------------
// Authentication

test('a client signing with a wrong key is refused with 401', async () => {
  const parts = Object.fromEntries(connectionString.split(';').map((p) => {
    const i = p.indexOf('=');
    return [p.slice(0, i), p.slice(i + 1)];
  }));
  const key = Buffer.from(parts.SharedAccessKey, 'base64');
  key[0] ^= 0xff;
  const wrong = `HostName=${parts.HostName};SharedAccessKeyName=${parts.SharedAccessKeyName};SharedAccessKey=${key.toString('base64')}`;
  const bad = ProvisioningServiceClient.fromConnectionString(wrong);
  const err = await expectHttpError(bad.getIndividualEnrollment('anything'), 401);
  assert.equal(err.name, 'UnauthorizedError');
  await expectHttpError(bad.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment('sdk-unauthorized')), 401);
  await expectHttpError(client.getIndividualEnrollment('sdk-unauthorized'), 404, 404201);

  // An unknown policy name is refused too.
  const unknownPolicy = ProvisioningServiceClient.fromConnectionString(
    `HostName=${parts.HostName};SharedAccessKeyName=nosuchpolicy;SharedAccessKey=${parts.SharedAccessKey}`);
  await expectHttpError(unknownPolicy.getIndividualEnrollment('anything'), 401);
});
