#!/usr/bin/env bash
# The local stack without Docker: Apache Kafka (KRaft, jars from Maven Central), ClickHouse,
# Prometheus and Alertmanager (Debian packages), a Schema Registry (Apicurio Registry, which
# answers Confluent's API, from Maven Central), as plain processes with their data under
# .stack/ (git-ignored). Every command is idempotent.
#
#   scripts/stack.sh up [SERVICE...]      install what is missing, start what is not running, wait
#   scripts/stack.sh down [SERVICE...]    stop (data is kept)
#   scripts/stack.sh status               one line per service
#   scripts/stack.sh logs SERVICE [N]     the last N lines of a service's log
#   scripts/stack.sh wipe                 stop everything and delete .stack/ data (keeps the jar cache)
#
# SERVICE is kafka, clickhouse, prometheus, alertmanager, alertmanager-tls, schema-registry,
# zookeeper, clickhouse-1, clickhouse-2, kafka-1, kafka-2 or kafka-3 (default: all but the
# kafka-N, which the soak starts).
#
# A replicated Kafka beside the single node: `kafka-1`, `kafka-2`, `kafka-3`, three KRaft
# processes (each broker and controller, a static quorum of the three) from the same jars, on
# 127.0.0.1:19092, :19093, :19094 (controllers :19192-:19194), replication factor 3 and
# min.insync.replicas 2 for every topic and internal topic: what production runs, for the
# fault-injection soak (scripts/soak.sh), which kills brokers.
#
# A replicated ClickHouse cluster beside the single server: `zookeeper` (Debian's package) and
# two ClickHouse servers, `clickhouse-1` (http://127.0.0.1:8124) and `clickhouse-2` (:8125), the
# two replicas of the one shard of cluster `banter_cluster` (macros {shard} and {replica}, the
# distributed DDL queue in ZooKeeper), for `clickhouse.cluster = "banter_cluster"`.
# Ports (environment): BANTER_KAFKA_PORT=9092 BANTER_KAFKA_CONTROLLER_PORT=9095
#   BANTER_KAFKA_SSL_PORT=9094 BANTER_KAFKA_SASL_PORT=9096 BANTER_KAFKA_IAM_PORT=9098
#   BANTER_CLICKHOUSE_HTTP_PORT=8123 BANTER_CLICKHOUSE_HTTPS_PORT=8443 BANTER_CLICKHOUSE_TCP_PORT=9000
#   BANTER_PROMETHEUS_PORT=9090 BANTER_ALERTMANAGER_PORT=9093 BANTER_ALERTMANAGER_TLS_PORT=9097
#   BANTER_SCHEMA_REGISTRY_PORT=8081 (Confluent's API at http://127.0.0.1:8081/apis/ccompat/v7)
#   BANTER_ZOOKEEPER_PORT=2181 BANTER_CLICKHOUSE_1_HTTP_PORT=8124 BANTER_CLICKHOUSE_2_HTTP_PORT=8125
#   (their native ports are 9001 and 9002, their replication ports 9011 and 9012)
#
# Secured endpoints, as production has them (certificates made by this script under
# .stack/tls/ with openssl: a local CA, a server certificate for localhost / 127.0.0.1, a
# client certificate, and a second CA that signed nothing, for "untrusted" tests):
#   Kafka SSL     localhost:9094  TLS with client certificates required
#   Kafka SASL    localhost:9096  SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (user `banter`,
#                                 password `banter-kafka-secret`; SCRAM made with kafka-configs)
#   Kafka IAM     localhost:9098  SASL_SSL OAUTHBEARER validated as Amazon MSK's IAM does
#                                 (scripts/msk-iam/MskIamValidator.java): region us-east-1,
#                                 access key AKIABANTERSTACK0001 / `banter-aws-secret`
#   ClickHouse    https://localhost:8443 (user `banter`, password `banter-ch-secret`)
#   Alertmanager  https://localhost:9097 (basic auth `banter` / `banter-am-secret`)
# These passwords are for this local stack only.
# Other: BANTER_STACK_DIR (default <repo>/.stack), BANTER_KAFKA_VERSION (default 4.1.1),
#   BANTER_APICURIO_VERSION (default 3.0.9), BANTER_STACK_TIMEOUT (seconds to wait for a service,
#   default 120).
set -euo pipefail

BANTER_SCRIPT=stack
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
KAFKA_VERSION="${BANTER_KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${BANTER_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${BANTER_KAFKA_CONTROLLER_PORT:-9095}"
KAFKA_SSL_PORT="${BANTER_KAFKA_SSL_PORT:-9094}"
KAFKA_SASL_PORT="${BANTER_KAFKA_SASL_PORT:-9096}"
KAFKA_IAM_PORT="${BANTER_KAFKA_IAM_PORT:-9098}"
CH_HTTPS_PORT="${BANTER_CLICKHOUSE_HTTPS_PORT:-8443}"
AM_TLS_PORT="${BANTER_ALERTMANAGER_TLS_PORT:-9097}"
CH_HTTP_PORT="${BANTER_CLICKHOUSE_HTTP_PORT:-8123}"
CH_TCP_PORT="${BANTER_CLICKHOUSE_TCP_PORT:-9000}"
PROM_PORT="${BANTER_PROMETHEUS_PORT:-9090}"
AM_PORT="${BANTER_ALERTMANAGER_PORT:-9093}"
SR_PORT="${BANTER_SCHEMA_REGISTRY_PORT:-8081}"
APICURIO_VERSION="${BANTER_APICURIO_VERSION:-3.0.9}"
TIMEOUT="${BANTER_STACK_TIMEOUT:-120}"
ZK_PORT="${BANTER_ZOOKEEPER_PORT:-2181}"
CH1_HTTP_PORT="${BANTER_CLICKHOUSE_1_HTTP_PORT:-8124}"
CH2_HTTP_PORT="${BANTER_CLICKHOUSE_2_HTTP_PORT:-8125}"
CLUSTER=banter_cluster
KAFKA_CLUSTER_PORT="${BANTER_KAFKA_CLUSTER_PORT:-19092}" # kafka-N: this + N - 1; controller: + 100
ALL=(kafka clickhouse prometheus alertmanager alertmanager-tls schema-registry zookeeper clickhouse-1 clickhouse-2)
# Started by name (the soak starts them): kafka-1 kafka-2 kafka-3.
EXTRA=(kafka-1 kafka-2 kafka-3)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null; }
https_ok() { curl -fs -m 2 -o /dev/null --cacert "$TLS/ca.pem" "$@" 2>/dev/null; } # [curl options] url

pidfile() { echo "$STACK/run/$1.pid"; }
running() {
  local f; f="$(pidfile "$1")"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_until() { # name, check command...
  local name="$1"; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    if ! running "$name"; then
      die "$name exited while starting; last log lines:
$(tail -n 25 "$STACK/logs/$name.log" 2>/dev/null)"
    fi
    (( SECONDS < deadline )) || die "$name did not answer within ${TIMEOUT}s; see scripts/stack.sh logs $name"
    sleep 0.5
  done
}

start_bg() { # name, command...
  local name="$1"; shift
  mkdir -p "$STACK/run" "$STACK/logs"
  nohup setsid "$@" >>"$STACK/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# ---------------------------------------------------------------- tls material
TLS="$STACK/tls"

# A local CA, a server certificate (localhost, 127.0.0.1) and a client certificate signed by
# it, and a second CA that signed nothing. Keys are unencrypted PKCS#8 PEM (what Kafka's PEM
# key stores, ClickHouse, Alertmanager and OpenSSL clients all read).
tls_material() {
  [[ -f "$TLS/client.pem" && -f "$TLS/rogue-ca.pem" ]] && return 0
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$TLS"
  say "making a local CA and certificates in $TLS"
  (
    cd "$TLS"
    for ca in ca rogue-ca; do
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=banter local $ca" \
        -keyout "$ca.key" -out "$ca.pem" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    done
    for who in server client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=banter-$who" -keyout "$who.key" -out "$who.csr"
      printf '%s\n' "basicConstraints=CA:FALSE" "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        "extendedKeyUsage=serverAuth,clientAuth" >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$who.ext" -out "$who.pem"
      cat "$who.key" "$who.pem" >"$who-keystore.pem"
    done
    rm -f ./*.csr ./*.ext
  ) >"$STACK/logs/tls.log" 2>&1 || die "cannot make certificates: see $STACK/logs/tls.log"
}

# ---------------------------------------------------------------- kafka
KAFKA_HOME="$STACK/cache/kafka-$KAFKA_VERSION"

kafka_install() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  [[ -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] && return 0
  command -v mvn >/dev/null || apt_install maven
  mkdir -p "$KAFKA_HOME"
  cat >"$KAFKA_HOME/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>banter.local</groupId><artifactId>kafka-dist</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
EOF
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central"
  (cd "$KAFKA_HOME" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs -DincludeScope=runtime) \
    >"$STACK/logs/kafka-fetch.log" 2>&1 || die "cannot fetch Kafka jars: see $STACK/logs/kafka-fetch.log"
}

kafka_up() {
  if running kafka && port_open "$KAFKA_PORT"; then
    say "kafka already running on :$KAFKA_PORT"
    port_open "$KAFKA_SSL_PORT" && port_open "$KAFKA_SASL_PORT" && port_open "$KAFKA_IAM_PORT" \
      || die "kafka is running without its SSL/SASL/IAM listeners (started by an older stack.sh): scripts/stack.sh down kafka && scripts/stack.sh up kafka"
    kafka_scram_users
    return 0
  fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set BANTER_KAFKA_PORT)"
  kafka_install
  for p in "$KAFKA_SSL_PORT" "$KAFKA_SASL_PORT" "$KAFKA_IAM_PORT"; do
    port_open "$p" && die "port $p is taken by another process (set BANTER_KAFKA_SSL_PORT / BANTER_KAFKA_SASL_PORT / BANTER_KAFKA_IAM_PORT)"
  done
  msk_iam_validator
  tls_material
  local dir="$STACK/kafka"; mkdir -p "$dir/data" "$STACK/logs"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,IAM://127.0.0.1:$KAFKA_IAM_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SSL://localhost:$KAFKA_SSL_PORT,SASL_SSL://localhost:$KAFKA_SASL_PORT,IAM://localhost:$KAFKA_IAM_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,IAM:SASL_SSL
inter.broker.listener.name=PLAINTEXT
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_banter="banter-kafka-secret";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";
listener.name.iam.ssl.client.auth=none
listener.name.iam.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.iam.oauthbearer.sasl.server.callback.handler.class=banter.stack.MskIamValidator
listener.name.iam.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker" access_key_id="AKIABANTERSTACK0001" secret_access_key="banter-aws-secret" region="us-east-1";
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=104857600
EOF
  cat >"$dir/log4j2.properties" <<EOF
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
  local cp="$KAFKA_HOME/libs/*:$MSK_IAM_CLASSES"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local id; id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    say "formatting kafka storage (cluster $id)"
    java -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" kafka.tools.StorageTool format \
      --standalone -t "$id" -c "$dir/server.properties" >>"$STACK/logs/kafka.log" 2>&1 \
      || die "kafka storage format failed: see $STACK/logs/kafka.log"
  fi
  say "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
  start_bg kafka java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" kafka.Kafka "$dir/server.properties"
  wait_until kafka kafka_ready
  kafka_scram_users
  say "kafka ready (SSL on localhost:$KAFKA_SSL_PORT, SASL_SSL on localhost:$KAFKA_SASL_PORT, MSK-style IAM on localhost:$KAFKA_IAM_PORT)"
}

# Node N (1-3) of the replicated cluster.
kafka_node_up() {
  local n="$1" name="kafka-$1" port ctl
  port="$(svc_port "$name")"; ctl=$((port + 100))
  if running "$name" && port_open "$port"; then say "$name already running on :$port"; return 0; fi
  for p in "$port" "$ctl"; do
    port_open "$p" && die "port $p is taken by another process (needed by $name; set BANTER_KAFKA_CLUSTER_PORT)"
  done
  kafka_install
  local dir="$STACK/$name" voters="" i
  for i in 1 2 3; do voters="$voters${voters:+,}$i@127.0.0.1:$((KAFKA_CLUSTER_PORT + i - 1 + 100))"; done
  mkdir -p "$dir/data" "$STACK/kafka-cluster"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=104857600
EOF
  cp "$STACK/kafka/log4j2.properties" "$dir/log4j2.properties" 2>/dev/null || cat >"$dir/log4j2.properties" <<EOF
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
  local cp="$KAFKA_HOME/libs/*"
  # One cluster id for the three nodes.
  local idf="$STACK/kafka-cluster/cluster.id"
  [[ -s "$idf" ]] || java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 >"$idf"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    java -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" kafka.tools.StorageTool format \
      -t "$(cat "$idf")" -c "$dir/server.properties" >>"$STACK/logs/$name.log" 2>&1 \
      || die "$name storage format failed: see $STACK/logs/$name.log"
  fi
  # "Kafka Server started" in the log means this start: keep the last start's log aside.
  [[ -f "$STACK/logs/$name.log" ]] && mv "$STACK/logs/$name.log" "$STACK/logs/$name.log.prev"
  say "starting $name on 127.0.0.1:$port (node $n of 3)"
  start_bg "$name" java -Xms128m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" kafka.Kafka "$dir/server.properties"
}
kafka_node_ready() { port_open "$(svc_port "kafka-$1")" && grep -q "Kafka Server started" "$STACK/logs/kafka-$1.log"; }
# The nodes start together (a quorum needs two of three) and are waited for together.
kafka_1_up() { kafka_node_up 1; [[ " ${services[*]} " == *" kafka-2 "* ]] || kafka_cluster_wait 1; }
kafka_2_up() { kafka_node_up 2; [[ " ${services[*]} " == *" kafka-3 "* ]] || kafka_cluster_wait 2; }
kafka_3_up() { kafka_node_up 3; kafka_cluster_wait 3; }
kafka_cluster_wait() { # up to node N
  local i
  for i in $(seq 1 "$1"); do
    [[ " ${services[*]} " == *" kafka-$i "* ]] || continue
    wait_until "kafka-$i" kafka_node_ready "$i"
  done
  say "kafka cluster nodes ready (127.0.0.1:$KAFKA_CLUSTER_PORT-$((KAFKA_CLUSTER_PORT + 2)))"
}

# The broker side of MSK's IAM authentication (scripts/msk-iam/MskIamValidator.java), compiled
# against the broker's jars when missing or older than its source.
MSK_IAM_CLASSES="$STACK/cache/msk-iam-validator"
msk_iam_validator() {
  local src="$ROOT/scripts/msk-iam/MskIamValidator.java" out="$MSK_IAM_CLASSES/banter/stack/MskIamValidator.class"
  [[ -f "$out" && "$out" -nt "$src" ]] && return 0
  command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
  mkdir -p "$MSK_IAM_CLASSES"
  javac -nowarn -cp "$KAFKA_HOME/libs/*" -d "$MSK_IAM_CLASSES" "$src" >"$STACK/logs/msk-iam-validator.log" 2>&1 \
    || die "cannot compile $src: see $STACK/logs/msk-iam-validator.log"
}

# The SCRAM credentials of the SASL_SSL listener, stored in the cluster metadata (idempotent).
# One mechanism per request: the broker refuses two credentials of a user in one.
kafka_scram_users() {
  local m
  for m in SCRAM-SHA-256 SCRAM-SHA-512; do
    java -Dlog4j2.configurationFile="$STACK/kafka/log4j2.properties" -cp "$KAFKA_HOME/libs/*" \
      kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter \
      --add-config "$m=[password=banter-kafka-secret]" \
      --entity-type users --entity-name banter >"$STACK/logs/kafka-configs.log" 2>&1 \
      || die "cannot create the $m user with kafka-configs: see $STACK/logs/kafka-configs.log"
  done
}

kafka_ready() {
  port_open "$KAFKA_PORT" && grep -q "Kafka Server started\|\[KafkaRaftServer nodeId=1\] Kafka Server started" "$STACK/logs/kafka.log"
}

# ---------------------------------------------------------------- clickhouse
# The users of every local ClickHouse server: `default` (no password, localhost only),
# `banter` (password `banter-ch-secret`) and `grafana`, read-only (password
# `banter-grafana-secret`; readonly=2: queries may change settings, never data or tables),
# the user dashboards read with.
clickhouse_users() {
  cat <<EOF
<?xml version="1.0"?>
<yandex>
  <profiles>
    <default><max_memory_usage>4000000000</max_memory_usage></default>
    <dashboards><max_memory_usage>2000000000</max_memory_usage><readonly>2</readonly></dashboards>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <banter>
      <password_sha256_hex>$(printf '%s' banter-ch-secret | sha256sum | cut -d' ' -f1)</password_sha256_hex>
      <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </banter>
    <grafana>
      <password_sha256_hex>$(printf '%s' banter-grafana-secret | sha256sum | cut -d' ' -f1)</password_sha256_hex>
      <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
      <profile>dashboards</profile>
      <quota>default</quota>
    </grafana>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
EOF
}

clickhouse_up() {
  if running clickhouse && http_ok "http://127.0.0.1:$CH_HTTP_PORT/ping"; then
    say "clickhouse already running on :$CH_HTTP_PORT"
    port_open "$CH_HTTPS_PORT" \
      || die "clickhouse is running without its HTTPS port (started by an older stack.sh): scripts/stack.sh down clickhouse && scripts/stack.sh up clickhouse"
    grep -q "<query_log>" "$STACK/clickhouse/config.xml" \
      || die "clickhouse is running without its query log (started by an older stack.sh): scripts/stack.sh down clickhouse && scripts/stack.sh up clickhouse"
    # Users as this script has them (ClickHouse reloads users.xml when it changes).
    clickhouse_users >"$STACK/clickhouse/users.xml"
    return 0
  fi
  port_open "$CH_HTTP_PORT" && die "port $CH_HTTP_PORT is taken by another process (set BANTER_CLICKHOUSE_HTTP_PORT)"
  command -v clickhouse-server >/dev/null || apt_install clickhouse-server clickhouse-client
  port_open "$CH_HTTPS_PORT" && die "port $CH_HTTPS_PORT is taken by another process (set BANTER_CLICKHOUSE_HTTPS_PORT)"
  tls_material
  local dir="$STACK/clickhouse"; mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log}
  # <yandex> is the root element 18.16 needs; current releases accept it too.
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger>
    <level>information</level>
    <log>$dir/log/clickhouse-server.log</log>
    <errorlog>$dir/log/clickhouse-server.err.log</errorlog>
    <size>100M</size>
    <count>3</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$CH_HTTP_PORT</http_port>
  <https_port>$CH_HTTPS_PORT</https_port>
  <tcp_port>$CH_TCP_PORT</tcp_port>
  <openSSL>
    <server>
      <certificateFile>$TLS/server.pem</certificateFile>
      <privateKeyFile>$TLS/server.key</privateKeyFile>
      <verificationMode>none</verificationMode>
      <loadDefaultCAFile>false</loadDefaultCAFile>
      <cacheSessions>true</cacheSessions>
      <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
      <preferServerCiphers>true</preferServerCiphers>
    </server>
  </openSSL>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <!-- Queries run with log_queries=1 are logged with the rows they read (tests measure it). -->
  <query_log>
    <database>system</database>
    <table>query_log</table>
    <partition_by>toYYYYMM(event_date)</partition_by>
    <flush_interval_milliseconds>1000</flush_interval_milliseconds>
  </query_log>
</yandex>
EOF
  clickhouse_users >"$dir/users.xml"
  say "starting clickhouse on 127.0.0.1:$CH_HTTP_PORT"
  start_bg clickhouse clickhouse-server --config-file="$dir/config.xml"
  wait_until clickhouse http_ok "http://127.0.0.1:$CH_HTTP_PORT/ping"
  wait_until clickhouse https_ok "https://localhost:$CH_HTTPS_PORT/ping"
  say "clickhouse ready ($(curl -fsS -m 2 "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%20version()" 2>/dev/null))"
}

# ---------------------------------------------------------------- replicated cluster
zookeeper_up() {
  if running zookeeper && port_open "$ZK_PORT"; then say "zookeeper already running on :$ZK_PORT"; return 0; fi
  port_open "$ZK_PORT" && die "port $ZK_PORT is taken by another process (set BANTER_ZOOKEEPER_PORT)"
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  [[ -f /usr/share/java/zookeeper.jar ]] || apt_install zookeeper
  local dir="$STACK/zookeeper"; mkdir -p "$dir/data"
  cat >"$dir/zoo.cfg" <<EOF
tickTime=2000
dataDir=$dir/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
autopurge.purgeInterval=1
EOF
  local cp=/usr/share/java/zookeeper.jar
  [[ -f /usr/share/java/slf4j-simple.jar ]] && cp="$cp:/usr/share/java/slf4j-simple.jar"
  say "starting zookeeper on 127.0.0.1:$ZK_PORT"
  start_bg zookeeper java -Xms32m -Xmx128m -XX:+UseSerialGC -cp "$cp" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg"
  wait_until zookeeper zk_ok
  say "zookeeper ready"
}
# Serving (`srvr` names its mode), not only running (`ruok` answers before it serves).
zk_ok() { [[ "$( (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && timeout 2 cat <&3) 2>/dev/null)" == *"Mode: "* ]]; }

# Replica N (1 or 2) of the one shard of $CLUSTER.
clickhouse_replica_up() {
  local n="$1" name="clickhouse-$1" http tcp inter
  http="$(svc_port "$name")"; tcp=$((9000 + n)); inter=$((9010 + n))
  if running "$name" && http_ok "http://127.0.0.1:$http/ping"; then
    say "$name already running on :$http"
    clickhouse_users >"$STACK/$name/users.xml"
    return 0
  fi
  for p in "$http" "$tcp" "$inter"; do
    port_open "$p" && die "port $p is taken by another process (needed by $name)"
  done
  command -v clickhouse-server >/dev/null || apt_install clickhouse-server clickhouse-client
  running zookeeper || zookeeper_up
  local dir="$STACK/$name"; mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log}
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger>
    <level>information</level>
    <log>$dir/log/clickhouse-server.log</log>
    <errorlog>$dir/log/clickhouse-server.err.log</errorlog>
    <size>100M</size>
    <count>3</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$http</http_port>
  <tcp_port>$tcp</tcp_port>
  <interserver_http_port>$inter</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>134217728</mark_cache_size>
  <uncompressed_cache_size>134217728</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <zookeeper><node><host>127.0.0.1</host><port>$ZK_PORT</port></node></zookeeper>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <macros><shard>01</shard><replica>replica-$n</replica></macros>
  <remote_servers>
    <$CLUSTER>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>9001</port></replica>
        <replica><host>127.0.0.1</host><port>9002</port></replica>
      </shard>
    </$CLUSTER>
  </remote_servers>
</yandex>
EOF
  clickhouse_users >"$dir/users.xml"
  say "starting $name on 127.0.0.1:$http (replica $n of $CLUSTER)"
  start_bg "$name" clickhouse-server --config-file="$dir/config.xml"
  wait_until "$name" http_ok "http://127.0.0.1:$http/ping"
  say "$name ready"
}
clickhouse_1_up() { clickhouse_replica_up 1; }
clickhouse_2_up() { clickhouse_replica_up 2; }

# ---------------------------------------------------------------- prometheus + alertmanager
prometheus_up() {
  if running prometheus && http_ok "http://127.0.0.1:$PROM_PORT/-/ready"; then say "prometheus already running on :$PROM_PORT"; return 0; fi
  port_open "$PROM_PORT" && die "port $PROM_PORT is taken by another process (set BANTER_PROMETHEUS_PORT)"
  command -v prometheus >/dev/null || apt_install prometheus
  local dir="$STACK/prometheus"; mkdir -p "$dir/data"
  cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  evaluation_interval: 5s
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:$AM_PORT"]
rule_files:
  - "$ROOT/docker/prometheus/rules/*.yml"
scrape_configs:
  - job_name: banter
    file_sd_configs:
      - files: ["$dir/targets/*.json"]
        refresh_interval: 5s
EOF
  # What runs here: \`banter run\` (or one role) on the default ops port. scripts/run.sh adds
  # its other roles' ports for as long as it runs, so a role that is not running is not
  # reported down (BanterRoleDown) after it.
  mkdir -p "$dir/targets"
  echo '[{"targets": ["127.0.0.1:9464"]}]' >"$dir/targets/default.json"
  say "starting prometheus on 127.0.0.1:$PROM_PORT"
  start_bg prometheus prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle
  wait_until prometheus http_ok "http://127.0.0.1:$PROM_PORT/-/ready"
  say "prometheus ready"
}

# Routes every alert to a receiver that only records it (what the tests read back).
alertmanager_config() { # dir
  cat >"$1/alertmanager.yml" <<EOF
route:
  receiver: log
  group_by: [alertname, account]
  group_wait: 5s
  group_interval: 30s
  repeat_interval: 1h
receivers:
  - name: log
EOF
}

alertmanager_up() {
  if running alertmanager && http_ok "http://127.0.0.1:$AM_PORT/-/ready"; then say "alertmanager already running on :$AM_PORT"; return 0; fi
  port_open "$AM_PORT" && die "port $AM_PORT is taken by another process (set BANTER_ALERTMANAGER_PORT)"
  command -v prometheus-alertmanager >/dev/null || apt_install prometheus-alertmanager
  local dir="$STACK/alertmanager"; mkdir -p "$dir/data"
  alertmanager_config "$dir"
  say "starting alertmanager on 127.0.0.1:$AM_PORT"
  start_bg alertmanager prometheus-alertmanager --config.file="$dir/alertmanager.yml" \
    --storage.path="$dir/data" --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address=
  wait_until alertmanager http_ok "http://127.0.0.1:$AM_PORT/-/ready"
  say "alertmanager ready"
}

# A second Alertmanager as production runs it: HTTPS with the local CA's server certificate and
# basic auth (`banter` / `banter-am-secret`; the hash below is bcrypt of that password).
alertmanager_tls_up() {
  if running alertmanager-tls && port_open "$AM_TLS_PORT"; then say "alertmanager-tls already running on :$AM_TLS_PORT"; return 0; fi
  port_open "$AM_TLS_PORT" && die "port $AM_TLS_PORT is taken by another process (set BANTER_ALERTMANAGER_TLS_PORT)"
  command -v prometheus-alertmanager >/dev/null || apt_install prometheus-alertmanager
  tls_material
  local dir="$STACK/alertmanager-tls"; mkdir -p "$dir/data"
  alertmanager_config "$dir"
  cat >"$dir/web.yml" <<EOF
tls_server_config:
  cert_file: $TLS/server.pem
  key_file: $TLS/server.key
basic_auth_users:
  banter: \$2b\$10\$vZf/VWs14bivJyxjHB6mYO2wBaBiRFTyMaOAN68oyMiJ1kaX4iaVC
EOF
  say "starting alertmanager-tls on https://localhost:$AM_TLS_PORT"
  start_bg alertmanager-tls prometheus-alertmanager --config.file="$dir/alertmanager.yml" \
    --storage.path="$dir/data" --web.listen-address="127.0.0.1:$AM_TLS_PORT" --cluster.listen-address= \
    --web.config.file="$dir/web.yml"
  wait_until alertmanager-tls https_ok -u banter:banter-am-secret "https://localhost:$AM_TLS_PORT/-/ready"
  say "alertmanager-tls ready"
}

# ---------------------------------------------------------------- schema registry
# Apicurio Registry (Apache 2.0, Maven Central) with its in-memory storage: Confluent's Schema
# Registry API under /apis/ccompat/v7, what banter's `confluent` wire format talks to. Its ids
# are content ids (they need not start at 1 or follow on); compatibility is NONE by default.
APICURIO_HOME="$STACK/cache/apicurio-$APICURIO_VERSION"

schema_registry_up() {
  local url="http://127.0.0.1:$SR_PORT/apis/ccompat/v7/subjects"
  if running schema-registry && http_ok "$url"; then say "schema-registry already running on :$SR_PORT"; return 0; fi
  port_open "$SR_PORT" && die "port $SR_PORT is taken by another process (set BANTER_SCHEMA_REGISTRY_PORT)"
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  local jar="$APICURIO_HOME/apicurio-registry-app-$APICURIO_VERSION-runner.jar"
  if [[ ! -f "$jar" ]]; then
    command -v mvn >/dev/null || apt_install maven
    mkdir -p "$APICURIO_HOME"
    say "fetching Apicurio Registry $APICURIO_VERSION from Maven Central"
    (cd "$APICURIO_HOME" \
      && mvn -q -B dependency:copy "-Dartifact=io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
        -DoutputDirectory=. -Dtransitive=false \
      && tar xzf "apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" \
      && rm -f "apicurio-registry-app-$APICURIO_VERSION-all.tar.gz") \
      >"$STACK/logs/schema-registry-fetch.log" 2>&1 \
      || die "cannot fetch Apicurio Registry: see $STACK/logs/schema-registry-fetch.log"
  fi
  say "starting schema-registry (Apicurio $APICURIO_VERSION) on 127.0.0.1:$SR_PORT"
  start_bg schema-registry java -Xms32m -Xmx192m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dquarkus.http.port="$SR_PORT" -Dquarkus.http.host=127.0.0.1 -Dquarkus.log.level=WARN \
    -Dquarkus.http.access-log.enabled=false -jar "$jar"
  wait_until schema-registry http_ok "$url"
  say "schema-registry ready"
}

# ---------------------------------------------------------------- commands
svc_port() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;; clickhouse) echo "$CH_HTTP_PORT" ;;
    prometheus) echo "$PROM_PORT" ;; alertmanager) echo "$AM_PORT" ;;
    alertmanager-tls) echo "$AM_TLS_PORT" ;; schema-registry) echo "$SR_PORT" ;;
    zookeeper) echo "$ZK_PORT" ;; clickhouse-1) echo "$CH1_HTTP_PORT" ;; clickhouse-2) echo "$CH2_HTTP_PORT" ;;
    kafka-1) echo "$KAFKA_CLUSTER_PORT" ;; kafka-2) echo $((KAFKA_CLUSTER_PORT + 1)) ;; kafka-3) echo $((KAFKA_CLUSTER_PORT + 2)) ;;
    *) die "unknown service $1 (${ALL[*]})" ;;
  esac
}

down_one() {
  local name="$1" f; f="$(pidfile "$name")"
  if running "$name"; then
    local pid; pid="$(cat "$f")"
    say "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.3; done
    kill -0 "$pid" 2>/dev/null && { say "$name did not stop in 30s, killing"; kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$f"
}

cmd="${1:-status}"; shift || true
services=("$@"); [[ ${#services[@]} -eq 0 ]] && services=("${ALL[@]}")
mkdir -p "$STACK/run" "$STACK/logs"

case "$cmd" in
  up)
    for s in "${services[@]}"; do svc_port "$s" >/dev/null; "${s//-/_}_up"; done ;;
  down)
    for s in "${services[@]}"; do svc_port "$s" >/dev/null; down_one "$s"; done ;;
  status)
    for s in "${ALL[@]}" "${EXTRA[@]}"; do
      p="$(svc_port "$s")"
      if running "$s" && port_open "$p"; then st="up (pid $(cat "$(pidfile "$s")"), 127.0.0.1:$p)"
      elif running "$s"; then st="starting (pid $(cat "$(pidfile "$s")"), 127.0.0.1:$p not answering)"
      else st="down"; fi
      printf '%-16s %s\n' "$s" "$st"
    done ;;
  logs)
    s="${services[0]}"; n="${2:-100}"; svc_port "$s" >/dev/null
    tail -n "$n" "$STACK/logs/$s.log" ;;
  wipe)
    for s in "${ALL[@]}" "${EXTRA[@]}"; do down_one "$s"; done
    rm -rf "$STACK"/{kafka,clickhouse,prometheus,alertmanager,alertmanager-tls,schema-registry,zookeeper,clickhouse-1,clickhouse-2,kafka-1,kafka-2,kafka-3,kafka-cluster,tls,run}
    say "wiped stack data (jar cache kept in $STACK/cache)" ;;
  *) die "usage: scripts/stack.sh up|down|status|logs|wipe [SERVICE...]" ;;
esac
