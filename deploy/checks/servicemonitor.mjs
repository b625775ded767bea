// Validates every ServiceMonitor in a rendered manifest (argv[2]) against the
// prometheus-operator CRD schema that npm's @kubernetes-models/prometheus-operator
// is generated from. check.sh runs it from the folder that package is installed in.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

let found = 0;
for (const doc of parseAllDocuments(readFileSync(process.argv[2], "utf8"))) {
  const obj = doc.toJS();
  if (obj?.kind !== "ServiceMonitor") continue;
  found++;
  try {
    new ServiceMonitor(obj).validate();
    console.log(`  ok   ServiceMonitor/${obj.metadata.name}`);
  } catch (e) {
    console.log(`  FAIL ServiceMonitor/${obj.metadata.name}: ${e.message}`);
    process.exitCode = 1;
  }
}
if (found === 0) {
  console.log("  FAIL no ServiceMonitor in the render");
  process.exitCode = 1;
}
