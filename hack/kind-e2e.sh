#!/usr/bin/env bash
# kpcap end to end on kind, for machines with Docker (it cannot run in the sandbox the tests use):
# create a cluster, build and load both images, helm install the chart, run MinIO in the cluster,
# apply crds/samples/full-capture.yaml (pointed at MinIO), make matching traffic, wait for success,
# and download the per-node PCAPs to ./kind-e2e-out/. KEEP=1 keeps the cluster.
# Needs: docker, kind, kubectl (>= 1.23 for `wait --for=jsonpath`), helm.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${KPCAP_KIND_CLUSTER:-kpcap-e2e}"
TAG=e2e NS=kpcap-system STORE=kpcap-minio OUT="$PWD/kind-e2e-out"
log() { printf '[kind-e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
[[ "${KEEP:-0}" == 1 ]] || trap 'kind delete cluster --name "$CLUSTER"' EXIT

log "cluster $CLUSTER: 1 control plane, 2 workers in zone colo-a"
kind create cluster --name "$CLUSTER" --wait 120s --config - <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes: [{role: control-plane}, {role: worker}, {role: worker}]
YAML
kubectl label nodes -l '!node-role.kubernetes.io/control-plane' topology.kubernetes.io/zone=colo-a --overwrite

log "building and loading the images"
docker build -f operator/Dockerfile -t "kpcap/kpcap-operator:$TAG" .
docker build -f capture-daemonset/Dockerfile -t "kpcap/kpcap-agent:$TAG" .
kind load docker-image --name "$CLUSTER" "kpcap/kpcap-operator:$TAG" "kpcap/kpcap-agent:$TAG"

log "MinIO in namespace $STORE, bucket kpcap-captures"
kubectl create namespace "$STORE"
kubectl -n "$STORE" create deployment minio --image=quay.io/minio/minio -- minio server /data
kubectl -n "$STORE" set env deployment/minio MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin
kubectl -n "$STORE" expose deployment minio --port 9000
kubectl -n "$STORE" rollout status deployment/minio --timeout=180s
mc() { kubectl -n "$STORE" run "mc-$RANDOM" --rm -i --quiet --restart=Never --image=quay.io/minio/mc \
         --command -- sh -c "mc alias set m http://minio:9000 minioadmin minioadmin >/dev/null && $1"; }
mc "mc mb -p m/kpcap-captures"
ENDPOINT="http://minio.$STORE.svc.cluster.local:9000"

log "helm install (storage credentials in an existing Secret)"
kubectl create namespace "$NS"
kubectl -n "$NS" create secret generic kpcap-storage --from-literal=AWS_ACCESS_KEY_ID=minioadmin \
  --from-literal=AWS_SECRET_ACCESS_KEY=minioadmin --from-literal=AWS_DEFAULT_REGION=us-east-1
helm install kpcap charts/kpcap --namespace "$NS" --wait --timeout 180s \
  --set operator.image.repository=kpcap/kpcap-operator --set operator.image.tag="$TAG" \
  --set operator.image.pullPolicy=Never --set agent.image.repository=kpcap/kpcap-agent \
  --set agent.image.tag="$TAG" --set agent.image.pullPolicy=Never --set storage.credentialsSecret=kpcap-storage
kubectl wait --for=jsonpath='{.webhooks[0].clientConfig.service.name}'=kpcap-webhook \
  validatingwebhookconfiguration/kpcap.io --timeout=120s

log "the sample full capture (colo-a, 20 s, MinIO endpoint)"
sed -e 's/colo: zone-a/colo: colo-a/' -e 's/timeLimit: 60/timeLimit: 20/' \
    -e "s|region=us-east-1|region=us-east-1\&endpoint=$ENDPOINT|" crds/samples/full-capture.yaml \
  | kubectl apply -f -
kubectl wait --for=jsonpath='{.status.status}'=running pcap/web-tls-full --timeout=120s
for node in $(kubectl get nodes -l topology.kubernetes.io/zone=colo-a -o name); do
  # SYNs to 198.18.0.10:443 (the sample's filter) leave the node's interfaces and are captured.
  docker exec "${node#node/}" bash -c 'for i in 1 2 3 4 5; do timeout 1 bash -c "</dev/tcp/198.18.0.10/443"; done' || true
done
kubectl wait --for=jsonpath='{.status.status}'=success pcap/web-tls-full --timeout=180s
kubectl get pcaps

id="$(kubectl get pcap web-tls-full -o jsonpath='{.metadata.uid}' | tr -d -)"
mkdir -p "$OUT"
for node in $(kubectl get nodes -l topology.kubernetes.io/zone=colo-a -o jsonpath='{.items[*].metadata.name}'); do
  mc "mc cat m/kpcap-captures/captures/pcap_$id/$node.pcap | base64" | base64 -d > "$OUT/$node.pcap"
  log "$OUT/$node.pcap: $(stat -c %s "$OUT/$node.pcap") bytes"
done
log "PCAPs in $OUT (tcpdump -nr / tshark -r / mergecap them)"
