// Drives gcp-metadata (npm), unmodified, against the metadata server that GCE_METADATA_HOST and
// GCE_METADATA_IP name, the way Google's Node.js libraries use it, and prints what the library got
// as one JSON object. crates/emulator/tests/e2e_real_clients.rs compares it with the emulator's
// document; this file only calls the library's documented API.
'use strict';
const gcp = require('gcp-metadata');

async function main() {
  const out = {};
  out.isAvailable = await gcp.isAvailable();
  out.instanceListing = await gcp.instance();
  out.hostname = await gcp.instance('hostname');
  // Numbers above 2^53 come back as BigNumber (json-bigint): exact as a string.
  out.id = String(await gcp.instance('id'));
  out.projectId = await gcp.project('project-id');
  out.numericProjectId = String(await gcp.project('numeric-project-id'));
  const instance = await gcp.instance({params: {recursive: 'true'}});
  out.recursiveId = String(instance.id);
  out.recursiveEmail = instance.serviceAccounts.default.email;
  out.recursiveMac = instance.networkInterfaces[0].mac;
  const project = await gcp.project({params: {recursive: 'true'}});
  out.projectRecursiveId = project.projectId;
  out.projectAttribute = await gcp.project('attributes/client-check');
  console.log(JSON.stringify(out));
}

main().catch(e => {
  console.error(`gcp-metadata failed: ${(e && e.stack) || e}`);
  process.exit(1);
});
