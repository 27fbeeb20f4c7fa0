//! The IMAP transport: log in, read each folder by UID from the committed cursor in bounded batches, IDLE (or poll),
//! and reconnect with capped exponential backoff whenever anything fails.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_imap::extensions::idle::IdleResponse;
use async_imap::{Client, Session};
use futures_util::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{FolderCursor, ImapConfig, Mailbox, Retry, Tls};

/// Longest a single IMAP command (connect, login, fetch of one batch) may take before the connection is dropped.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of message bodies fetched per batch at most (the batch shrinks for large messages, never below one).
const BATCH_BYTES: u64 = 64 * 1024 * 1024;

trait Connection: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Connection for T {}
type Conn = Box<dyn Connection>;

/// Read the mailbox until cancelled.
pub(super) async fn run(mailbox: Mailbox, imap: ImapConfig, cancel: CancellationToken) {
    let mut delay = Duration::from_secs(1);
    loop {
        mailbox.status().set_state(&mailbox.connector, "connecting");
        // Cancelling drops a connection attempt or a batch in flight: a batch commits atomically or not at all.
        let attempt = tokio::select! {
            r = session(&mailbox, &imap, &cancel, &mut delay) => r,
            _ = cancel.cancelled() => Ok(()),
        };
        match attempt {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(connector = %mailbox.connector, host = %imap.host, user = %imap.user, %error,
                    retry_in_ms = delay.as_millis() as u64, "mailbox connection failed; retrying");
                mailbox.status().backing_off(&mailbox.connector, &error);
                if !mailbox.backoff(&mut delay, &cancel).await {
                    break;
                }
            }
        }
    }
    mailbox.status().set_state(&mailbox.connector, "stopped");
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, future).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            COMMAND_TIMEOUT.as_secs()
        )),
    }
}

async fn connect(imap: &ImapConfig) -> Result<Client<Conn>, String> {
    let address = format!("{}:{}", imap.host, imap.port());
    let tcp = timed(
        &format!("connecting to {address}"),
        TcpStream::connect(&address),
    )
    .await?;
    let _ = tcp.set_nodelay(true);
    match imap.tls {
        Tls::None => {
            let mut client = Client::new(Box::new(tcp) as Conn);
            greeting(&mut client, &address).await?;
            Ok(client)
        }
        Tls::Required => {
            let tls = tls_wrap(imap, tcp).await?;
            let mut client = Client::new(tls);
            greeting(&mut client, &address).await?;
            Ok(client)
        }
        Tls::Starttls => {
            let mut client = Client::new(tcp);
            match timed("reading the server greeting", async {
                Ok::<_, String>(client.read_response().await)
            })
            .await?
            {
                Some(Ok(_)) => {}
                _ => {
                    return Err(format!(
                        "{address} closed the connection before its greeting"
                    ))
                }
            }
            timed(
                "STARTTLS",
                client.run_command_and_check_ok("STARTTLS", None),
            )
            .await?;
            let tls = tls_wrap(imap, client.into_inner()).await?;
            Ok(Client::new(tls))
        }
    }
}

async fn greeting(client: &mut Client<Conn>, address: &str) -> Result<(), String> {
    match timed("reading the server greeting", async {
        Ok::<_, String>(client.read_response().await)
    })
    .await?
    {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(format!("reading the greeting of {address}: {e}")),
        None => Err(format!(
            "{address} closed the connection before its greeting"
        )),
    }
}

async fn tls_wrap(imap: &ImapConfig, tcp: TcpStream) -> Result<Conn, String> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &imap.ca_file {
        add_ca_file(&mut roots, path)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("tls setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(imap.host.clone()).map_err(|e| {
        format!(
            "mailbox.imap.host `{}` is not a valid tls server name: {e}",
            imap.host
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = format!("tls handshake with {}", imap.host);
    let stream = match tokio::time::timeout(COMMAND_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("{handshake}: {}", tls_failure(&e, imap))),
        Err(_) => {
            return Err(format!(
                "{handshake}: no answer within {} s",
                COMMAND_TIMEOUT.as_secs()
            ))
        }
    };
    Ok(Box::new(stream))
}

/// The certificates of a PEM file added to the trusted roots; errors name the file and what is wrong with it.
fn add_ca_file(
    roots: &mut tokio_rustls::rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<(), String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let what = format!("mailbox.imap.ca_file {}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("reading {what}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading {what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        ));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{what}: not a usable CA certificate: {e}"))?;
    }
    Ok(())
}

/// A failed handshake, said plainly when the server's certificate is not trusted.
fn tls_failure(e: &std::io::Error, imap: &ImapConfig) -> String {
    use tokio_rustls::rustls::Error;
    let cause = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>());
    match cause {
        Some(Error::InvalidCertificate(why)) => {
            let trust = match &imap.ca_file {
                Some(path) => format!(
                    "it is not signed by an authority in mailbox.imap.ca_file {} or the public list",
                    path.display()
                ),
                None => "if the server uses a self-signed or company certificate, put its CA certificate (PEM) in a \
                         file and name it in mailbox.imap.ca_file"
                    .to_string(),
            };
            format!("the server's certificate is not trusted ({why:?}); {trust}")
        }
        _ => e.to_string(),
    }
}

/// One connection's life: Ok when cancelled, Err with the reason when it failed or broke.
async fn session(
    mailbox: &Mailbox,
    imap: &ImapConfig,
    cancel: &CancellationToken,
    delay: &mut Duration,
) -> Result<(), String> {
    let client = connect(imap).await?;
    let password = imap.password()?;
    let login = tokio::time::timeout(COMMAND_TIMEOUT, client.login(&imap.user, &password)).await;
    let mut session = match login {
        Ok(Ok(session)) => session,
        Ok(Err((e, _))) => {
            return Err(format!(
                "login as {} refused by {}: {e}",
                imap.user, imap.host
            ))
        }
        Err(_) => {
            return Err(format!(
                "login as {}: no answer within {} s",
                imap.user,
                COMMAND_TIMEOUT.as_secs()
            ))
        }
    };
    *delay = Duration::from_secs(1);
    mailbox.status().set_state(&mailbox.connector, "connected");
    tracing::info!(connector = %mailbox.connector, host = %imap.host, user = %imap.user, "mailbox connected");
    let capabilities = timed("CAPABILITY", session.capabilities()).await?;
    let can_idle = capabilities.has_str("IDLE") && imap.folders.len() == 1;
    let can_move = capabilities.has_str("MOVE");
    let poll = Duration::from_secs(mailbox.config.poll_secs);
    // The folder this connection has selected, with its UIDVALIDITY: a single folder stays selected across IDLE, so a
    // wake-up goes straight to the search (a server never changes a selected folder's UIDVALIDITY; it disconnects).
    let mut selected: Option<(String, u32)> = None;
    // When the server's last IDLE notification arrived, for the timing of the batch it starts.
    let mut woke: Option<Instant> = None;
    loop {
        for folder in &imap.folders {
            let at = Reading {
                folder,
                can_move,
                woke: woke.take(),
            };
            drain(mailbox, imap, &mut session, &mut selected, at, cancel).await?;
            if cancel.is_cancelled() {
                let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                return Ok(());
            }
        }
        if can_idle {
            mailbox.status().set_state(&mailbox.connector, "idle");
            let mut idle = session.idle();
            timed("IDLE", idle.init()).await?;
            let outcome = {
                let (wait, _stop) = idle.wait_with_timeout(poll);
                tokio::select! {
                    r = wait => Some(r),
                    _ = cancel.cancelled() => None,
                }
            };
            let now = Instant::now();
            // The server closing the connection ends the wait like an interrupt; DONE then fails and we reconnect.
            session = timed("ending IDLE", idle.done()).await?;
            match outcome {
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                    return Ok(());
                }
                Some(Err(e)) => return Err(format!("waiting in IDLE: {e}")),
                Some(Ok(IdleResponse::NewData(data))) => {
                    tracing::debug!(connector = %mailbox.connector, response = ?data.parsed(),
                        done_ms = now.elapsed().as_millis() as u64, "mailbox woken from IDLE");
                    woke = Some(now);
                }
                Some(Ok(IdleResponse::Timeout | IdleResponse::ManualInterrupt)) => {}
            }
        } else {
            mailbox.status().set_state(&mailbox.connector, "polling");
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                    return Ok(());
                }
                _ = tokio::time::sleep(poll) => {}
            }
            timed("NOOP", session.noop()).await?;
        }
    }
}

/// Which folder [`drain`] reads, and why now.
struct Reading<'a> {
    folder: &'a str,
    /// The server offers `MOVE`.
    can_move: bool,
    /// When an IDLE notification for this folder arrived, if one started this read.
    woke: Option<Instant>,
}

/// Milliseconds spent in each step of reading one batch, for the `mail batch committed` log line.
struct Steps {
    last: Instant,
    taken: Vec<(&'static str, u128)>,
}

impl Steps {
    fn start() -> Steps {
        Steps {
            last: Instant::now(),
            taken: Vec::new(),
        }
    }

    /// The step that just ended.
    fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        self.taken.push((step, (now - self.last).as_millis()));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.taken.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{step}:{ms}")?;
        }
        Ok(())
    }
}

/// Read a folder from its committed cursor to its end, one committed batch at a time.
async fn drain(
    mailbox: &Mailbox,
    imap: &ImapConfig,
    session: &mut Session<Conn>,
    selected: &mut Option<(String, u32)>,
    at: Reading<'_>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let Reading {
        folder,
        can_move,
        mut woke,
    } = at;
    let mut steps = Steps::start();
    let validity = match selected {
        Some((name, validity)) if name == folder => *validity,
        _ => {
            *selected = None;
            let mailbox = timed(
                &format!("selecting folder {folder}"),
                session.select(folder),
            )
            .await?;
            let validity = mailbox.uid_validity.unwrap_or(0);
            *selected = Some((folder.to_string(), validity));
            steps.lap("select");
            validity
        }
    };
    let source = format!("mail/{}/{folder}", mailbox.connector);
    let stored = mailbox
        .state
        .engine
        .mail_cursor(&source)
        .map_err(|e| format!("reading the cursor of folder {folder}: {e}"))?;
    let mut last = match stored {
        Some(c) if c["uid_validity"].as_u64() == Some(u64::from(validity)) => c["last_uid"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        Some(c) => {
            tracing::warn!(connector = %mailbox.connector, %folder, old = %c["uid_validity"], new = validity,
                "folder UIDVALIDITY changed: reading it again from the start (processed messages are recognised)");
            0
        }
        None => 0,
    };
    mailbox.status().folder(
        &mailbox.connector,
        folder,
        FolderCursor {
            uid_validity: validity,
            last_uid: last,
        },
    );
    let max = mailbox.config.max_bytes();
    // The UIDs still to read, oldest first: searched once (one response line, however long the backlog) and then listed
    // with their sizes one batch at a time. Listing everything above the cursor for every batch made a backlog of n
    // messages cost n²/batch listed lines: 10,000 messages drained at a few per second.
    let mut pending: VecDeque<u32> = VecDeque::new();
    while !cancel.is_cancelled() {
        if pending.is_empty() {
            // `UID n:*` also matches the highest message when its UID is below n: filter on our side.
            let found = timed(
                &format!("searching new messages in {folder}"),
                session.uid_search(format!("UID {}:*", last + 1)),
            )
            .await?;
            let mut uids: Vec<u32> = found.into_iter().filter(|uid| *uid > last).collect();
            uids.sort_unstable();
            steps.lap("search");
            if uids.is_empty() {
                return Ok(());
            }
            pending = uids.into();
        }
        let next: Vec<u32> = pending.iter().take(mailbox.config.batch).copied().collect();
        let listed: Vec<async_imap::types::Fetch> =
            timed(&format!("listing new messages in {folder}"), async {
                session
                    .uid_fetch(uid_set(&next), "(UID RFC822.SIZE)")
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        steps.lap("list");
        let mut todo: Vec<(u32, u64)> = listed
            .iter()
            .filter_map(|f| Some((f.uid?, u64::from(f.size.unwrap_or(0)))))
            .filter(|(uid, _)| next.binary_search(uid).is_ok())
            .collect();
        todo.sort_unstable();
        todo.dedup_by_key(|(uid, _)| *uid);
        if todo.is_empty() {
            // All of them were expunged since the search: nothing to read.
            pending.drain(..next.len());
            continue;
        }
        let mut bytes = 0u64;
        let mut take = 0;
        for (_, size) in todo.iter().take(mailbox.config.batch) {
            let counted = if *size > max { 0 } else { *size };
            if take > 0 && bytes + counted > BATCH_BYTES {
                break;
            }
            bytes += counted;
            take += 1;
        }
        todo.truncate(take);
        let wanted: Vec<u32> = todo
            .iter()
            .filter(|(_, size)| *size <= max)
            .map(|(uid, _)| *uid)
            .collect();
        let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
        if !wanted.is_empty() {
            let fetched: Vec<async_imap::types::Fetch> =
                timed(&format!("fetching messages from {folder}"), async {
                    session
                        .uid_fetch(uid_set(&wanted), "(UID BODY.PEEK[])")
                        .await?
                        .try_collect()
                        .await
                })
                .await?;
            for f in &fetched {
                if let (Some(uid), Some(body)) = (f.uid, f.body()) {
                    bodies.insert(uid, body.to_vec());
                }
            }
            steps.lap("fetch");
        }
        let mut messages = Vec::with_capacity(todo.len());
        let mut done_uids = Vec::with_capacity(todo.len());
        for (uid, size) in &todo {
            let location = format!("{folder} uid {uid}");
            if *size > max {
                let key = format!("oversized:{folder}:{validity}:{uid}");
                messages.push(mailbox.oversized(key, location, *size));
                continue;
            }
            // A message expunged between the listing and the fetch is gone: nothing to read.
            let Some(raw) = bodies.remove(uid) else {
                continue;
            };
            match mailbox.judge(raw, location).await {
                Ok(m) => {
                    done_uids.push(*uid);
                    messages.push(m);
                }
                Err(Retry(reason)) => {
                    return Err(format!(
                        "handing {folder} uid {uid} to the plugin: {reason}"
                    ))
                }
            }
        }
        steps.lap("plugin");
        let new_last = todo.last().map(|(uid, _)| *uid).unwrap_or(last);
        let cursor = serde_json::json!({"uid_validity": validity, "last_uid": new_last});
        let summary = mailbox
            .state
            .engine
            .ingest_mail(
                &mailbox.connector,
                &mailbox.plugin,
                Some((&source, cursor)),
                messages,
            )
            .await
            .map_err(|e| format!("committing messages of {folder}: {e}"))?;
        steps.lap("commit");
        mailbox
            .state
            .metrics
            .records_ingested
            .fetch_add(summary.records.new, std::sync::atomic::Ordering::Relaxed);
        for (location, reason) in &summary.failed {
            tracing::warn!(connector = %mailbox.connector, %location, %reason, "mail message failed");
        }
        // `steps_ms`: where the batch's time went; `since_idle_wake_ms`: from the server's IDLE notification to durable.
        let since_idle_wake_ms = woke.take().map(|w| w.elapsed().as_millis() as u64);
        tracing::info!(connector = %mailbox.connector, %folder, last_uid = new_last, new = summary.new,
            duplicates = summary.duplicates, not_mine = summary.not_mine, failed = summary.failed.len(),
            steps_ms = %steps, since_idle_wake_ms, "mail batch committed");
        mailbox.status().committed(&mailbox.connector, &summary);
        mailbox.status().folder(
            &mailbox.connector,
            folder,
            FolderCursor {
                uid_validity: validity,
                last_uid: new_last,
            },
        );
        last = new_last;
        while pending.front().is_some_and(|uid| *uid <= new_last) {
            pending.pop_front();
        }
        if !done_uids.is_empty() {
            let set = uid_set(&done_uids);
            match &imap.move_to {
                Some(target) if can_move => {
                    timed(
                        &format!("moving messages to {target}"),
                        session.uid_mv(&set, target),
                    )
                    .await?;
                }
                Some(target) => {
                    timed(
                        &format!("copying messages to {target}"),
                        session.uid_copy(&set, target),
                    )
                    .await?;
                    let _: Vec<_> = timed("flagging moved messages deleted", async {
                        session
                            .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
                            .await?
                            .try_collect()
                            .await
                    })
                    .await?;
                    let _: Vec<_> = timed("expunging moved messages", async {
                        session.uid_expunge(&set).await?.try_collect().await
                    })
                    .await?;
                }
                None => {
                    let _: Vec<_> = timed("flagging messages seen", async {
                        session
                            .uid_store(&set, "+FLAGS.SILENT (\\Seen)")
                            .await?
                            .try_collect()
                            .await
                    })
                    .await?;
                }
            }
            tracing::debug!(connector = %mailbox.connector, %folder, ms = steps.last.elapsed().as_millis() as u64,
                "mail batch flagged or moved");
        }
        steps = Steps::start();
    }
    Ok(())
}

/// `1,2,5` for a list of UIDs.
fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
