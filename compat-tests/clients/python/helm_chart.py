"""The Helm chart, checked without a Kubernetes cluster.

1. Lint (Helm's SDK through helm-python-sdk, no helm binary) with the default values and every
   values file under helm/fjord/ci/.
2. values.schema.json: each of those passes; values that are wrong in shape, type or range fail
   at install, as do contradictory ones (more voters than replicas, a Secret-backed feature
   without its Secret).
3. Every rendered manifest validated against the Kubernetes schemas (kubernetes-validate,
   strict); the ServiceMonitor (a CRD) checked field by field.
4. The chart boots a real cluster: the config and command line the rendered StatefulSet gives
   each pod are resolved as the kubelet would (downward API, $(VAR) expansion, the ConfigMap
   mounted as a file) and three `fjord` processes run with them on loopback, each pod's DNS
   name mapped to an address of its own (as each pod has its own network namespace). They must
   form a cluster that takes a replicated topic, a produce and a consume, and serve every
   metric the chart's Grafana dashboard plots.

Usage: helm_chart.py CHART_DIR FJORD_BINARY
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import helm_python as helm
import kubernetes_validate
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

KUBE_VERSION = "1.30.0"
RELEASE = "fjord"
NAMESPACE = "streaming"
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def checks_done(_what):
    """Counts a check whose failure raised already."""
    global checks
    checks += 1


def values_files(chart_dir):
    ci = os.path.join(chart_dir, "ci")
    return [("default", {})] + [
        (name, yaml.safe_load(open(os.path.join(ci, name))))
        for name in sorted(os.listdir(ci))
        if name.endswith(".yaml")
    ]


def render(chart, values):
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def lint(chart_dir, values_list):
    for name, values in values_list:
        report = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSION)
        problems = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
        check(not problems and not report.get("errors"), f"lint with {name}: {report}")


def schema(chart, values_list):
    for name, values in values_list:
        chart.validate_schema(values)
        checks_done(f"schema accepts {name}")
    wrong = [
        {"replicas": 0},
        {"replicas": "three"},
        {"replicaz": 3},
        {"image": {"repository": "fjord", "tag": 5}},
        {"ports": {"kafka": 70000, "cluster": 9192, "admin": 9644}},
        {"zoneSpread": "sometimes"},
        {"config": {"Log-Retention": 1}},
        {"persistence": {"size": "lots"}},
        {"serviceMonitor": {"enabled": True, "interval": "often"}},
        {"controller": {"voters": 0}},
    ]
    for values in wrong:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError:
            checks_done(f"schema refuses {values}")
            continue
        raise AssertionError(f"the schema accepted {values}")
    contradictory = [
        ({"replicas": 2, "controller": {"voters": 3}}, "controller.voters (3) cannot exceed replicas (2)"),
        ({"s3": {"enabled": True}}, "s3.existingSecret is required"),
        ({"tls": {"enabled": True}}, "tls.existingSecret is required"),
    ]
    for values, says in contradictory:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            check(says in str(e), f"{values}: {e}")
            continue
        raise AssertionError(f"rendered {values}")


def validate_manifests(chart, values_list):
    for name, values in values_list:
        docs = render(chart, values)
        merged = chart.merge_values(values)
        kinds = sorted(d["kind"] for d in docs)
        for doc in docs:
            if doc["kind"] == "ServiceMonitor":
                check(doc["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
                ep = doc["spec"]["endpoints"][0]
                check(ep["port"] == "admin" and ep["path"] == "/metrics", f"ServiceMonitor endpoint {ep}")
                check(doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "headless",
                      "ServiceMonitor scrapes every pod through the headless service")
                continue
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
            checks_done(f"{name}: {doc['kind']} valid")
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        check(sts["spec"]["replicas"] == merged["replicas"], f"{name}: replicas")
        pod = sts["spec"]["template"]["spec"]
        c = pod["containers"][0]
        check(pod["securityContext"]["runAsNonRoot"] is True, "non-root")
        check(c["readinessProbe"]["httpGet"]["path"] == "/v1/ready", "readiness probe")
        check(c["livenessProbe"]["httpGet"]["path"] == "/v1/health", "liveness probe")
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "fjord.toml" in d["data"])
        voters = re.search(r'controller_quorum_voters = "([^"]*)"', cm["data"]["fjord.toml"]).group(1).split(",")
        check(len(voters) == merged["controller"]["voters"], f"{name}: voters {voters}")
        check(("PodDisruptionBudget" in kinds) == merged["podDisruptionBudget"]["enabled"], f"{name}: PDB")
        check(("ServiceMonitor" in kinds) == merged["serviceMonitor"]["enabled"], f"{name}: ServiceMonitor")
        affinity = pod.get("affinity", {}).get("podAntiAffinity", {})
        if merged["zoneSpread"] == "hard":
            check("requiredDuringSchedulingIgnoredDuringExecution" in affinity, f"{name}: hard zone spread")
        for k, v in merged["config"].items():
            check(re.search(rf"^{k} = ", cm["data"]["fjord.toml"], re.M), f"{name}: config {k}")


def pod_env(container, i, pod_name):
    """The container's environment as the kubelet gives it to pod i."""
    env = {}
    for e in container["env"]:
        if "value" in e:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            value = f"secret {ref['name']}/{ref['key']}"
        else:
            ref = e["valueFrom"].get("fieldRef", {}).get("fieldPath")
            value = {
                "metadata.name": pod_name,
                "metadata.labels['apps.kubernetes.io/pod-index']": str(i),
                "metadata.labels['topology.kubernetes.io/zone']": f"zone-{i}",
            }.get(ref)
            if value is None:
                raise AssertionError(f"unexpected env source {e}")
        env[e["name"]] = value
    return env


def config_accepted(chart, values_list, fjord):
    """Each values file's rendered config and pod environment pass fjord's own config checks: a
    key fjord does not know, or a value of the wrong type, would crash-loop every pod."""
    for name, values in values_list:
        docs = render(chart, values)
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "fjord.toml" in d["data"])
        container = sts["spec"]["template"]["spec"]["containers"][0]
        with tempfile.TemporaryDirectory() as root:
            toml_path = os.path.join(root, "fjord.toml")
            data = cm["data"]["fjord.toml"].replace("/var/lib/fjord", root)
            open(toml_path, "w").write(data)
            env = pod_env(container, 0, f"{RELEASE}-0")
            env["PATH"] = os.environ.get("PATH", "")
            p = subprocess.Popen([fjord, "--config", toml_path], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            try:
                # Config errors end the process at once with exit code 2, before it binds
                # anything; an accepted config goes on to bind the pod's addresses, which do
                # not resolve here.
                _, err = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            check(p.returncode != 2, f"{name}: fjord refuses the rendered config: {err.strip()[:400]}")


def http(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def wait(what, cond, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def boot(chart, chart_dir, fjord):
    docs = render(chart, {})
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "fjord.toml" in d["data"])
    container = sts["spec"]["template"]["spec"]["containers"][0]
    replicas = sts["spec"]["replicas"]
    headless = sts["spec"]["serviceName"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_path = next(p for p, m in mounts.items() if m["name"] == "config")
    data_mount = next(p for p, m in mounts.items() if m["name"] == "data")
    hosts = {f"{RELEASE}-{i}.{headless}.{NAMESPACE}.svc.cluster.local": f"127.0.0.{101 + i}" for i in range(replicas)}
    work = tempfile.mkdtemp(prefix="fjord-helm-")
    procs = []
    try:
        for i in range(replicas):
            pod = f"{RELEASE}-{i}"
            ip = hosts[f"{pod}.{headless}.{NAMESPACE}.svc.cluster.local"]
            root = os.path.join(work, pod)
            os.makedirs(root)

            def local(text):
                for host, addr in hosts.items():
                    text = text.replace(host, addr)
                # Each pod binds every address of its own network namespace: here, its own.
                return text.replace("0.0.0.0", ip).replace(data_mount, os.path.join(root, "volume"))

            toml_path = os.path.join(root, "fjord.toml")
            open(toml_path, "w").write(local(cm["data"]["fjord.toml"]))
            args = [toml_path if a == config_path else local(a) for a in container["args"]]
            env = {k: local(v) for k, v in pod_env(container, i, pod).items()}
            env.update({"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"})
            log = open(os.path.join(root, "fjord.log"), "w")
            procs.append((subprocess.Popen([fjord] + args, env=env, stdout=log, stderr=log), root))
        admins = [f"http://127.0.0.{101 + i}:{container['ports'][2]['containerPort']}" for i in range(replicas)]
        for i, admin in enumerate(admins):
            wait(f"pod {i} ready", lambda: procs[i][0].poll() is None and http(admin + "/v1/ready")[0] == 200)
        checks_done("every pod ready")
        cluster = json.loads(http(admins[0] + "/v1/cluster")[1])
        check(cluster["brokers"] == replicas and cluster["live_brokers"] == replicas, f"cluster {cluster}")
        brokers = json.loads(http(admins[0] + "/v1/brokers")[1])
        check(sorted(b["rack"] for b in brokers) == [f"zone-{i}" for i in range(replicas)], f"racks {brokers}")
        check(sorted(b["node_id"] for b in brokers) == list(range(replicas)), f"node ids {brokers}")

        bootstrap = ",".join(f"{addr}:9092" for addr in hosts.values())
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("events", 3, 3)])["events"].result(30)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        sent = [f"event-{n}".encode() for n in range(30)]
        for v in sent:
            producer.produce("events", v)
        check(producer.flush(30) == 0, "every record acknowledged")
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "helm", "auto.offset.reset": "earliest"})
        consumer.subscribe(["events"])
        got = []
        deadline = time.time() + 60
        while len(got) < len(sent) and time.time() < deadline:
            m = consumer.poll(1.0)
            if m is not None and not m.error():
                got.append(m.value())
        consumer.close()
        check(sorted(got) == sorted(sent), f"consumed {len(got)} of {len(sent)}")

        # Every metric the dashboard plots is served (the reassignment lag only while a
        # partition moves).
        dashboard = json.load(open(os.path.join(chart_dir, "dashboards", "fjord.json")))
        exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
        names = set(re.findall(r"\b(fjord_[a-z_]+)\{", exprs))
        served = set()
        for a in admins:
            for full in re.findall(r"^(fjord_[a-z_]+)[{ ]", http(a + "/metrics")[1], re.M):
                served.add(full)
                # A histogram's series name its family with a suffix.
                served.add(re.sub(r"_(bucket|count|sum)$", "", full))
        missing = sorted(names - served - {"fjord_reassignment_lag_entries"})
        check(not missing, f"dashboard metrics not served: {missing}")
    finally:
        for p, root in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, root in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.returncode not in (0, -signal.SIGTERM):
                print(open(os.path.join(root, "fjord.log")).read()[-3000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


def image(chart, chart_dir):
    """The Dockerfile runs fjord as the user the chart's securityContext names, with the
    ports the chart opens."""
    dockerfile = open(os.path.join(chart_dir, "..", "..", "Dockerfile")).read()
    sts = next(d for d in render(chart, {}) if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    uid = pod["securityContext"]["runAsUser"]
    check(re.search(rf"^USER {uid}:", dockerfile, re.M), f"Dockerfile USER is not {uid}")
    check(re.search(r'^ENTRYPOINT \["/usr/local/bin/fjord"\]', dockerfile, re.M), "Dockerfile ENTRYPOINT")
    ports = [str(p["containerPort"]) for p in pod["containers"][0]["ports"]]
    expose = re.search(r"^EXPOSE (.*)$", dockerfile, re.M).group(1).split()
    check(sorted(expose) == sorted(ports), f"EXPOSE {expose} vs the chart's ports {ports}")


def main():
    chart_dir, fjord = sys.argv[1], sys.argv[2]
    chart = helm.Chart.load(chart_dir)
    values_list = values_files(chart_dir)
    lint(chart_dir, values_list)
    schema(chart, values_list)
    validate_manifests(chart, values_list)
    config_accepted(chart, values_list, fjord)
    image(chart, chart_dir)
    boot(chart, chart_dir, fjord)
    print(f"helm chart: {checks} checks passed")


if __name__ == "__main__":
    main()
