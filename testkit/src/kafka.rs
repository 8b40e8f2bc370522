//! A Kafka-protocol broker for the tests: `tansu` (0.6.0, Apache-Kafka compatible,
//! SQLite storage) as a child process on loopback, restartable on the same data, with
//! topic creation and a consumer that reads topics back.
//!
//! The binary is `$TERN_TANSU`, else `tansu/bin/tansu` in the tool cache
//! (`$TERN_TOOLS_DIR`, default `~/.cache/tern-tools`), where `scripts/test.sh` installs
//! it. A missing binary is an error naming how to get it, never a skipped test.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka_faults::FaultProxy;
use crate::{io_err, Error, Result};

/// The broker process. SIGKILLed when dropped.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Where clients are told to connect, if not `port` (a [`FaultProxy`]).
    advertised: Option<SocketAddr>,
    child: Option<Child>,
}

/// One record read back.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers in order, values as text (lossy).
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (the producer's create time), Unix milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Broker {
    /// Where the broker binary is looked for.
    pub fn bin() -> Result<PathBuf> {
        let path = match std::env::var_os("TERN_TANSU") {
            Some(p) => PathBuf::from(p),
            None => {
                let tools = std::env::var_os("TERN_TOOLS_DIR")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("XDG_CACHE_HOME")
                            .map(|c| PathBuf::from(c).join("tern-tools"))
                    })
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tern-tools"))
                    })
                    .unwrap_or_else(|| PathBuf::from(".cache/tern-tools"));
                tools.join("tansu/bin/tansu")
            }
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::MissingBinary {
                what: "the tansu Kafka broker (scripts/test.sh installs it; or set TERN_TANSU)"
                    .into(),
                path: path.display().to_string(),
            })
        }
    }

    /// Starts a broker keeping its data (SQLite) and log in `dir`, with a schema
    /// registry in `dir/schemas` (a `<topic>.json` there makes the broker validate
    /// that topic's records), on a free loopback port.
    pub fn start(dir: &Path) -> Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("picking a port for the broker"))?
            .port();
        Broker::start_on(dir, port, None)
    }

    /// [`Broker::start`] behind `proxy`: the broker listens on the proxy's upstream
    /// port and advertises the proxy, and [`Broker::bootstrap`] is the proxy, so every
    /// client connection goes through it.
    pub fn start_behind(dir: &Path, proxy: &FaultProxy) -> Result<Broker> {
        Broker::start_on(dir, proxy.upstream().port(), Some(proxy.addr()))
    }

    fn start_on(dir: &Path, port: u16, advertised: Option<SocketAddr>) -> Result<Broker> {
        std::fs::create_dir_all(dir.join("schemas"))
            .map_err(io_err(format!("creating {}", dir.display())))?;
        let mut broker = Broker {
            bin: Broker::bin()?,
            dir: dir.to_path_buf(),
            port,
            advertised,
            child: None,
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        match self.advertised {
            Some(addr) => addr.to_string(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// The schema registry directory.
    pub fn schemas(&self) -> PathBuf {
        self.dir.join("schemas")
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = match self.advertised {
            Some(addr) => format!("tcp://{addr}"),
            None => url.clone(),
        };
        let log = self.dir.join("tansu.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(format!("opening {}", log.display())))?;
        let out = err
            .try_clone()
            .map_err(io_err("duplicating the broker's log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            .arg("--storage-engine")
            // Like `file://`, `sqlite://` is read relative to the working directory.
            .arg("sqlite://tansu.db")
            .arg("--schema-registry")
            // tansu reads `file://` URLs relative to its working directory (`dir`).
            .arg("file://schemas/")
            // tansu reads a `.env` file from its working directory: give it its own.
            .current_dir(&self.dir)
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("SCHEMA_REGISTRY")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            what: "tansu".into(),
            source,
        })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Waits until the broker answers a metadata request.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(self.not_ready(format!("exited with {status}")));
                }
            }
            let consumer: std::result::Result<BaseConsumer<Quiet>, _> =
                self.client_config().create_with_context(Quiet);
            if let Ok(c) = consumer {
                if c.fetch_metadata(None, Duration::from_secs(2)).is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(self.not_ready("no metadata reply".into()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn not_ready(&self, detail: String) -> Error {
        let log = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Error::NotReady {
            what: "tansu".into(),
            detail: format!("{detail}\n{tail}"),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("group.id", "tern-tests")
            .set("enable.auto.commit", "false")
            .set("socket.timeout.ms", "10000")
            .set("log_level", "3");
        c
    }

    /// SIGKILLs the broker (its data stays in its directory).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Creates `topic` with `partitions` partitions (replication 1) and topic
    /// `config` entries; an existing topic is an error.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<()> {
        let admin: AdminClient<Quiet> = self
            .client_config()
            .create_with_context(Quiet)
            .map_err(|e| kafka_err("creating an admin client", e))?;
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (k, v) in config {
            new = new.set(k, v);
        }
        let results = admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| kafka_err("creating a topic", e))?;
        for r in results {
            if let Err((name, code)) = r {
                return Err(Error::Io {
                    what: format!("creating topic {name}"),
                    source: std::io::Error::other(format!("{code:?}")),
                });
            }
        }
        Ok(())
    }

    /// Reads every record of `topic` (all partitions, from the beginning to the high
    /// watermark at the time of the call). Blocking: call it off the async workers.
    pub fn read_topic(&self, topic: &str) -> Result<Vec<Record>> {
        self.read_topic_from(topic, &std::collections::HashMap::new())
    }

    /// Reads the records of `topic` from offset `from[partition]` (the start of a
    /// partition missing from `from`) to the high watermark at the time of the call:
    /// a reader that keeps the next offset of each partition reads each record once.
    /// Blocking: call it off the async workers.
    pub fn read_topic_from(
        &self,
        topic: &str,
        from: &std::collections::HashMap<i32, i64>,
    ) -> Result<Vec<Record>> {
        let consumer: BaseConsumer<Quiet> = self
            .client_config()
            .create_with_context(Quiet)
            .map_err(|e| kafka_err("creating a consumer", e))?;
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| kafka_err("fetching metadata", e))?;
        let partitions: Vec<i32> = meta
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = Vec::new();
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .map_err(|e| kafka_err("fetching watermarks", e))?;
            let start = from.get(p).copied().unwrap_or(low).max(low);
            if high > start {
                ends.push((*p, high));
                list.add_partition_offset(topic, *p, Offset::Offset(start))
                    .map_err(|e| kafka_err("assigning", e))?;
            }
        }
        let mut records = Vec::new();
        if ends.is_empty() {
            return Ok(records);
        }
        consumer
            .assign(&list)
            .map_err(|e| kafka_err("assigning", e))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        // Partitions whose end has not been read yet.
        let mut left: std::collections::HashMap<i32, i64> = ends.iter().copied().collect();
        while !left.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Io {
                    what: format!("reading topic {topic}"),
                    source: std::io::Error::other(format!(
                        "read {} records, partitions' ends {ends:?} not reached in 120 s",
                        records.len()
                    )),
                });
            }
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(e)) => return Err(kafka_err("consuming", e)),
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    if left
                        .get(&m.partition())
                        .is_some_and(|high| m.offset() + 1 >= *high)
                    {
                        left.remove(&m.partition());
                    }
                    records.push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().unwrap_or_default().to_vec(),
                        headers,
                        timestamp_ms: m.timestamp().to_millis(),
                    });
                }
            }
        }
        Ok(records)
    }
}

/// The test clients' context: librdkafka's logs and errors at `debug` (a broker
/// being waited for, or killed on purpose, is not an error of the test).
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", facility = fac, "{message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason);
    }
}

impl ConsumerContext for Quiet {}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kafka_err(what: &str, e: rdkafka::error::KafkaError) -> Error {
    Error::Io {
        what: what.into(),
        source: std::io::Error::other(e.to_string()),
    }
}
