//! The rendezvous and the CPU collective, over TCP in a star around rank 0.
//!
//! Rendezvous: rank 0 listens on `MASTER_ADDR:MASTER_PORT`; every other rank connects
//! (retrying until its deadline, since rank 0 may start later) and says who it is: its
//! rank, the world size and the run's fingerprint. Once every rank has joined and agrees,
//! rank 0 sends each an opaque payload (the NCCL unique id on GPUs; nothing on the CPU).
//! Any disagreement or a rank that never shows up ends the rendezvous with an error on
//! rank 0 naming it, which rank 0 also sends to the ranks already connected.
//!
//! Collective: every rank sends its values to rank 0, which adds them in rank order
//! (`((x0 + x1) + x2) + ...`) and sends the sum back, so every rank holds the same bits and
//! the result does not depend on timing. Every message is framed with its kind and the
//! operation's sequence number, so ranks that fall out of step fail with an error instead
//! of mixing up data; a peer that dies or goes silent past the timeout is an error naming
//! its rank.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cim_spec::backend::Backend;

use super::Collective;
use super::world::{Master, World};
use crate::device::backend_err;

/// First bytes of every hello, so a stray connection is recognised as one.
const MAGIC: &[u8; 8] = b"CIM-RDV1";

/// The largest message accepted (a bucket larger than this would be a bug or garbage).
const MAX_MESSAGE: u64 = 1 << 34;

/// Pause between attempts to reach a rank 0 that is not listening yet.
const RETRY: Duration = Duration::from_millis(100);

/// How much longer than the timeout a rank other than 0 waits for rank 0's verdict.
const VERDICT_GRACE: Duration = Duration::from_secs(5);

/// What a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A rank introduces itself to rank 0.
    Hello = 1,
    /// Rank 0 admits a rank and hands it the payload.
    Welcome = 2,
    /// Rank 0 ends the rendezvous; the body says why.
    Refusal = 3,
    /// Gradient values of one bucket (to rank 0: a rank's own; from rank 0: the sum).
    Bucket = 4,
    /// One rank's host bytes, to rank 0.
    Gather = 5,
    /// Every rank's host bytes, from rank 0.
    Gathered = 6,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        [
            Kind::Hello,
            Kind::Welcome,
            Kind::Refusal,
            Kind::Bucket,
            Kind::Gather,
            Kind::Gathered,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Hello => "a rendezvous hello",
            Kind::Welcome => "the rendezvous welcome",
            Kind::Refusal => "a rendezvous refusal",
            Kind::Bucket => "a gradient bucket",
            Kind::Gather => "host values",
            Kind::Gathered => "gathered host values",
        }
    }
}

/// A framed connection to one peer: `[kind u8][sequence u32 LE][length u64 LE][body]`.
struct Link {
    /// The peer's rank (`usize::MAX` before its hello is read).
    rank: usize,
    /// The peer in error messages: "rank 3", or an address before its hello.
    name: String,
    stream: TcpStream,
}

impl Link {
    fn new(stream: TcpStream, rank: usize, name: String) -> Result<Link> {
        stream
            .set_nodelay(true)
            .with_context(|| format!("configuring the connection to {name}"))?;
        Ok(Link { rank, name, stream })
    }

    /// Waits at most `timeout` for each read and write from now on.
    fn set_timeout(&self, timeout: Duration) -> Result<()> {
        let t = Some(timeout.max(Duration::from_millis(1)));
        self.stream
            .set_read_timeout(t)
            .and_then(|()| self.stream.set_write_timeout(t))
            .with_context(|| format!("setting the timeout of the connection to {}", self.name))
    }

    /// An I/O error as the user should read it.
    fn io_error(&self, e: std::io::Error, doing: &str) -> anyhow::Error {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                let waited = self
                    .stream
                    .read_timeout()
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                anyhow!(
                    "{} sent nothing for {:.0} s while {doing}: is it stuck or far behind? (see its output)",
                    self.name,
                    waited.as_secs_f64()
                )
            }
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => anyhow!(
                "lost the connection to {} while {doing}: it probably stopped with an error (see its output)",
                self.name
            ),
            _ => anyhow!("talking to {} while {doing}: {e}", self.name),
        }
    }

    fn send(&mut self, kind: Kind, seq: u32, body: &[u8]) -> Result<()> {
        let mut header = [0u8; 13];
        header[0] = kind as u8;
        header[1..5].copy_from_slice(&seq.to_le_bytes());
        header[5..].copy_from_slice(&(body.len() as u64).to_le_bytes());
        self.stream
            .write_all(&header)
            .and_then(|()| self.stream.write_all(body))
            .map_err(|e| self.io_error(e, &format!("sending {}", kind.describe())))
    }

    /// Reads the next message into `body`, which must be of `kind` and sequence `seq`;
    /// a refusal is an error carrying rank 0's reason.
    fn recv(&mut self, kind: Kind, seq: u32, body: &mut Vec<u8>) -> Result<()> {
        let doing = format!("waiting for {}", kind.describe());
        let mut header = [0u8; 13];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| self.io_error(e, &doing))?;
        let got_seq = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(header[5..].try_into().expect("8 bytes"));
        let got = match Kind::from_byte(header[0]) {
            Some(k) if len <= MAX_MESSAGE => k,
            _ => bail!(
                "{} does not speak this protocol (message kind {}, length {len}): is it a cim process of the same version?",
                self.name,
                header[0]
            ),
        };
        body.resize(len as usize, 0);
        self.stream
            .read_exact(body)
            .map_err(|e| self.io_error(e, &doing))?;
        if got == Kind::Refusal {
            bail!(
                "{} ended the rendezvous: {}",
                self.name,
                String::from_utf8_lossy(body)
            );
        }
        if got != kind || got_seq != seq {
            bail!(
                "{} sent {} (operation {got_seq}) where {} (operation {seq}) was due: the ranks are out of step (do they run the same build and recipe?)",
                self.name,
                got.describe(),
                kind.describe()
            );
        }
        Ok(())
    }
}

/// What the rendezvous leaves each rank: rank 0's payload and the connections of the star
/// (rank 0 holds one to every other rank, in rank order; the others one to rank 0).
pub struct Rendezvous {
    rank: usize,
    size: usize,
    payload: Vec<u8>,
    links: Vec<Link>,
}

impl Rendezvous {
    /// The payload rank 0 chose (on rank 0 too).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Meets the other ranks of `world` (see the module documentation): every rank must pass
/// the same `fingerprint` (the recipe, the backend, the build); rank 0 calls `payload`
/// once every rank has joined and its result reaches all. Fails, naming the rank and the
/// problem, on any disagreement or when the others are not all there within `timeout`.
/// A single process meets no one.
pub fn rendezvous(
    world: &World,
    fingerprint: &str,
    payload: impl FnOnce() -> Vec<u8>,
    timeout: Duration,
) -> Result<Rendezvous> {
    let deadline = Instant::now() + timeout;
    let (payload, links) = match &world.master {
        None if world.size == 1 => (payload(), Vec::new()),
        None => bail!(
            "a world of {} ranks needs rank 0's address (MASTER_ADDR and MASTER_PORT)",
            world.size
        ),
        Some(master) if world.is_root() => {
            let mut links = gather_ranks(world, master, fingerprint, deadline, timeout)?;
            let payload = payload();
            for link in &mut links {
                link.send(Kind::Welcome, 0, &payload)?;
            }
            (payload, links)
        }
        Some(master) => {
            let (payload, link) = join(world, master, fingerprint, deadline, timeout)?;
            (payload, vec![link])
        }
    };
    Ok(Rendezvous {
        rank: world.rank,
        size: world.size,
        payload,
        links,
    })
}

/// `rank`, `size` and `fingerprint` as a hello body.
fn hello(rank: usize, size: usize, fingerprint: &str) -> Vec<u8> {
    let mut body = MAGIC.to_vec();
    body.extend_from_slice(&(rank as u64).to_le_bytes());
    body.extend_from_slice(&(size as u64).to_le_bytes());
    body.extend_from_slice(fingerprint.as_bytes());
    body
}

/// Rank, world size and fingerprint of a hello body; `None` if it is not one.
fn parse_hello(body: &[u8]) -> Option<(usize, usize, String)> {
    let rest = body.strip_prefix(MAGIC)?;
    let word = |b: &[u8]| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok();
    let rank = word(rest.get(..8)?)?;
    let size = word(rest.get(8..16)?)?;
    let fingerprint = String::from_utf8(rest.get(16..)?.to_vec()).ok()?;
    Some((rank, size, fingerprint))
}

/// Rank 0: accepts every other rank before `deadline`, returning their links in rank order.
fn gather_ranks(
    world: &World,
    master: &Master,
    fingerprint: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<Link>> {
    let place = format!("{}:{}", master.addr, master.port);
    let listener = TcpListener::bind((master.addr.as_str(), master.port))
        .with_context(|| {
            format!(
                "rank 0 cannot listen on MASTER_ADDR:MASTER_PORT = {place} (is another process using the port? a torchrun agent holds it for its own store: start the ranks directly)"
            )
        })?;
    listener
        .set_nonblocking(true)
        .context("configuring the rendezvous listener")?;
    let mut joined: Vec<Link> = Vec::new();
    while joined.len() + 1 < world.size {
        let Some((stream, from)) = accept_before(&listener, deadline)? else {
            let missing: Vec<String> = (1..world.size)
                .filter(|r| joined.iter().all(|l| l.rank != *r))
                .map(|r| r.to_string())
                .collect();
            let reason = anyhow!(
                "rank(s) {} of {} did not join the rendezvous at {place} within {:.0} s (did they start, with MASTER_ADDR:MASTER_PORT = {place}?)",
                missing.join(", "),
                world.size,
                timeout.as_secs_f64()
            );
            return Err(refuse(&mut joined, reason));
        };
        match admit(stream, from, world, fingerprint, deadline, &joined) {
            Ok(link) => joined.push(link),
            Err(reason) => return Err(refuse(&mut joined, reason)),
        }
    }
    joined.sort_by_key(|l| l.rank);
    Ok(joined)
}

/// Tells every rank in `joined` why the rendezvous ends, and returns the reason.
fn refuse(joined: &mut [Link], reason: anyhow::Error) -> anyhow::Error {
    for link in joined {
        // Best effort: the reason reaches those still listening; the error stands.
        let _ = link.send(Kind::Refusal, 0, reason.to_string().as_bytes());
    }
    reason
}

/// The next connection to `listener`, or `None` once `deadline` passes.
fn accept_before(
    listener: &TcpListener,
    deadline: Instant,
) -> Result<Option<(TcpStream, SocketAddr)>> {
    loop {
        match listener.accept() {
            Ok((stream, from)) => {
                stream
                    .set_nonblocking(false)
                    .context("configuring an accepted connection")?;
                return Ok(Some((stream, from)));
            }
            // Interrupted: a signal (Ctrl-C sets the stop flag) landed during the call.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(anyhow!("accepting a rank's connection: {e}")),
        }
    }
}

/// Reads a newcomer's hello and checks it against rank 0's view of the run; on a mismatch
/// the newcomer is told why and the error names it.
fn admit(
    stream: TcpStream,
    from: SocketAddr,
    world: &World,
    fingerprint: &str,
    deadline: Instant,
    joined: &[Link],
) -> Result<Link> {
    let mut link = Link::new(stream, usize::MAX, format!("the connection from {from}"))?;
    link.set_timeout(deadline.saturating_duration_since(Instant::now()))?;
    let mut body = Vec::new();
    link.recv(Kind::Hello, 0, &mut body)?;
    let Some((rank, size, theirs)) = parse_hello(&body) else {
        bail!(
            "{} sent a malformed hello: is it a cim process of the same version?",
            link.name
        );
    };
    let problem = if size != world.size {
        Some(format!(
            "rank {rank} (at {from}) was started with WORLD_SIZE={size}, rank 0 with WORLD_SIZE={}",
            world.size
        ))
    } else if rank == 0 || rank >= size {
        Some(format!(
            "the connection from {from} claims RANK={rank}, which is not one of 1..{}",
            size - 1
        ))
    } else if let Some(other) = joined.iter().find(|l| l.rank == rank) {
        Some(format!(
            "two processes claim RANK={rank} ({} and {from}): every process needs its own RANK",
            other.name
        ))
    } else if theirs != fingerprint {
        Some(format!(
            "rank {rank}'s run fingerprint differs from rank 0's: [{theirs}] vs [{fingerprint}] (every rank must run the same build, backend and recipe, overrides included)"
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        // Best effort: the newcomer learns why; the error stands either way.
        let _ = link.send(Kind::Refusal, 0, problem.as_bytes());
        bail!(problem);
    }
    link.rank = rank;
    link.name = format!("rank {rank}");
    Ok(link)
}

/// A rank other than 0: reaches rank 0 before `deadline`, says hello, and waits for the
/// payload (a little past the deadline, so that it reports rank 0's verdict rather than a
/// bare timeout when rank 0 gives up on a missing rank).
fn join(
    world: &World,
    master: &Master,
    fingerprint: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<u8>, Link)> {
    let place = format!("{}:{}", master.addr, master.port);
    let addrs: Vec<SocketAddr> = (master.addr.as_str(), master.port)
        .to_socket_addrs()
        .with_context(|| format!("MASTER_ADDR={} does not resolve", master.addr))?
        .collect();
    let stream = 'connect: loop {
        let mut last_error = format!("MASTER_ADDR={} has no address", master.addr);
        for a in &addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(a, left.max(Duration::from_millis(1))) {
                Ok(stream) => break 'connect stream,
                Err(e) => last_error = e.to_string(),
            }
        }
        if Instant::now() + RETRY >= deadline {
            bail!(
                "rank {} could not reach rank 0 at MASTER_ADDR:MASTER_PORT = {place} within {:.0} s ({last_error}): is rank 0 running, and reachable from this node?",
                world.rank,
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(RETRY);
    };
    let mut link = Link::new(stream, 0, "rank 0".into())?;
    link.set_timeout(deadline.saturating_duration_since(Instant::now()) + VERDICT_GRACE)?;
    link.send(Kind::Hello, 0, &hello(world.rank, world.size, fingerprint))?;
    let mut payload = Vec::new();
    link.recv(Kind::Welcome, 0, &mut payload)?;
    Ok((payload, link))
}

/// The CPU collective: sums and gathers through rank 0 over the rendezvous's connections.
pub struct TcpCollective {
    rank: usize,
    size: usize,
    links: Vec<Link>,
    /// Operations so far: each message carries its operation's number.
    ops: u32,
    /// A bucket's values on the host.
    values: Vec<f32>,
    /// A message's bytes.
    wire: Vec<u8>,
}

impl TcpCollective {
    /// Meets the other ranks ([`rendezvous`], with no payload) and waits at most `timeout`
    /// for a peer in every later operation.
    pub fn connect(world: &World, fingerprint: &str, timeout: Duration) -> Result<Self> {
        TcpCollective::new(rendezvous(world, fingerprint, Vec::new, timeout)?, timeout)
    }

    /// The collective over the connections of `rendezvous`, waiting at most `timeout` for a
    /// peer in each operation.
    pub fn new(rendezvous: Rendezvous, timeout: Duration) -> Result<Self> {
        for link in &rendezvous.links {
            link.set_timeout(timeout)?;
        }
        Ok(TcpCollective {
            rank: rendezvous.rank,
            size: rendezvous.size,
            links: rendezvous.links,
            ops: 0,
            values: Vec::new(),
            wire: Vec::new(),
        })
    }

    /// The number of the next operation.
    fn next_op(&mut self) -> u32 {
        self.ops = self.ops.wrapping_add(1);
        self.ops
    }

    /// Sums `self.values` over the ranks in rank order; every rank ends with rank 0's sum.
    fn sum_values(&mut self) -> Result<()> {
        let op = self.next_op();
        let expected = self.values.len() * 4;
        let wrong_length = |link: &Link, got: usize| {
            anyhow!(
                "{} sent {} gradient values in operation {op} where {} were due: the ranks' bucket plans differ",
                link.name,
                got / 4,
                expected / 4
            )
        };
        if self.rank == 0 {
            for link in &mut self.links {
                link.recv(Kind::Bucket, op, &mut self.wire)?;
                if self.wire.len() != expected {
                    return Err(wrong_length(link, self.wire.len()));
                }
                for (acc, x) in self.values.iter_mut().zip(self.wire.chunks_exact(4)) {
                    *acc += f32::from_le_bytes(x.try_into().expect("4 bytes"));
                }
            }
            encode(&self.values, &mut self.wire);
            for link in &mut self.links {
                link.send(Kind::Bucket, op, &self.wire)?;
            }
        } else {
            encode(&self.values, &mut self.wire);
            let root = &mut self.links[0];
            root.send(Kind::Bucket, op, &self.wire)?;
            root.recv(Kind::Bucket, op, &mut self.wire)?;
            if self.wire.len() != expected {
                return Err(wrong_length(root, self.wire.len()));
            }
            for (v, x) in self.values.iter_mut().zip(self.wire.chunks_exact(4)) {
                *v = f32::from_le_bytes(x.try_into().expect("4 bytes"));
            }
        }
        Ok(())
    }
}

/// `values` as little-endian bytes in `out`.
fn encode(values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

impl<B: Backend> Collective<B> for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    /// The ranges travel as one message (one operation) per call.
    fn all_reduce_sum(
        &mut self,
        b: &B,
        grads: &mut B::Buffer,
        ranges: &[Range<usize>],
    ) -> Result<()> {
        let len = B::buffer_len(grads);
        if let Some(range) = ranges.iter().find(|r| r.end > len || r.start > r.end) {
            bail!("gradient range {range:?} is not within the buffer of {len} values");
        }
        let total: usize = ranges.iter().map(|r| r.len()).sum();
        if total == 0 {
            return Ok(());
        }
        self.values.resize(total, 0.0);
        let mut at = 0;
        for range in ranges {
            b.download(
                b.view(grads, range.clone()),
                &mut self.values[at..][..range.len()],
            )
            .map_err(backend_err)?;
            at += range.len();
        }
        self.sum_values()?;
        let mut at = 0;
        for range in ranges {
            b.upload(
                b.view_mut(grads, range.clone()),
                &self.values[at..][..range.len()],
            )
            .map_err(backend_err)?;
            at += range.len();
        }
        Ok(())
    }

    fn all_gather(&mut self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        let op = self.next_op();
        if self.rank == 0 {
            let mut parts = vec![local.to_vec()];
            for link in &mut self.links {
                link.recv(Kind::Gather, op, &mut self.wire)?;
                parts.push(self.wire.clone());
            }
            self.wire.clear();
            for part in &parts {
                self.wire
                    .extend_from_slice(&(part.len() as u64).to_le_bytes());
                self.wire.extend_from_slice(part);
            }
            for link in &mut self.links {
                link.send(Kind::Gathered, op, &self.wire)?;
            }
            Ok(parts)
        } else {
            let root = &mut self.links[0];
            root.send(Kind::Gather, op, local)?;
            root.recv(Kind::Gathered, op, &mut self.wire)?;
            let mut parts = Vec::with_capacity(self.size);
            let mut rest = self.wire.as_slice();
            while let Some((len, tail)) = rest.split_first_chunk::<8>() {
                let len = u64::from_le_bytes(*len) as usize;
                let Some((part, tail)) = tail.split_at_checked(len) else {
                    break;
                };
                parts.push(part.to_vec());
                rest = tail;
            }
            if parts.len() != self.size || !rest.is_empty() {
                bail!(
                    "rank 0 sent malformed gathered values ({} bytes): is it a cim process of the same version?",
                    self.wire.len()
                );
            }
            Ok(parts)
        }
    }
}
