//! Data-parallel training across GPUs: [`NcclCollective`] sums the gradient buffer over the
//! ranks with NCCL, on the device, bucket by bucket while the backward is still running.
//!
//! Rank 0 creates the NCCL unique id and hands it to the others as the payload of
//! cim-train's TCP rendezvous, whose connections then carry the few host bytes of
//! `all_gather` (step votes, model digests). Each bucket the backward finishes
//! ([`Collective::bucket_ready`]) is summed in place (f32, `ncclSum`) on a communication
//! stream of its own: an event recorded on the compute stream makes that stream wait for
//! the ops that wrote the bucket, and the compute stream goes on with the backward meanwhile
//! (it writes other ranges only). [`Collective::finish`] makes the compute stream wait for
//! the communication stream, so every later op (clipping, AdamW, the next zeroing) sees the
//! sums; the host does not wait. NCCL's ring algorithm gives every rank the same bits, and
//! for fixed sizes and topology the same bits on every run.
//!
//! libnccl is loaded at run time like the other CUDA libraries; its absence is an error
//! saying how to provide it ([`nccl_unavailable_reason`]), never a panic.

use std::ffi::c_char;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cim_spec::backend::Memory;
use cim_train::distributed::{Bucket, Collective, TcpCollective, World, rendezvous};
use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::{result as nccl, sys};

use crate::{Cuda, Device, Gpu};

/// Bytes of an NCCL unique id.
const ID_BYTES: usize = 128;

/// Why NCCL cannot be used here (libnccl is not on the library path, with how to provide
/// it), or `None` when it can.
pub fn nccl_unavailable_reason() -> Option<String> {
    // SAFETY: this only tries to dlopen the library by its candidate names.
    if unsafe { sys::is_culib_present() } {
        return None;
    }
    Some(
        "libnccl.so (NCCL, for data-parallel training on GPUs) was not found on the library path: \
         install the nvidia-nccl-cu13 (or nvidia-nccl-cu12) PyPI wheel, which holds \
         nvidia/nccl/lib/libnccl.so.2, make a folder with a link libnccl.so -> that file \
         (the name cudarc looks for) and put the folder first on LD_LIBRARY_PATH \
         (scripts/gpu-check.sh does this with PyTorch's copy)"
            .into(),
    )
}

/// `call` failed with `e`, named by its code and NCCL's own words (cudarc's `Debug` of the
/// error says only "NcclError").
fn nccl_error(call: &str, e: nccl::NcclError) -> anyhow::Error {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let words = unsafe { std::ffi::CStr::from_ptr(sys::ncclGetErrorString(e.0)) };
    anyhow!("{call} failed: {:?} ({})", e.0, words.to_string_lossy())
}

/// An NCCL unique id as the rendezvous payload.
fn encode_id(id: &sys::ncclUniqueId) -> Vec<u8> {
    id.internal.iter().map(|&c| c as u8).collect()
}

/// The NCCL unique id in a rendezvous payload.
fn decode_id(payload: &[u8]) -> Result<sys::ncclUniqueId> {
    let Ok(bytes) = <[u8; ID_BYTES]>::try_from(payload) else {
        bail!(
            "rank 0 sent a payload of {} bytes where an NCCL id of {ID_BYTES} was due: does rank 0 run cim-cuda on a GPU?",
            payload.len()
        );
    };
    Ok(sys::ncclUniqueId {
        internal: bytes.map(|b| b as c_char),
    })
}

/// Meets the other ranks of `world` and returns the NCCL id rank 0 made with `make_id`
/// (called on rank 0 only), with the rendezvous's connections.
fn exchange_id(
    world: &World,
    fingerprint: &str,
    timeout: Duration,
    make_id: impl FnOnce() -> Result<sys::ncclUniqueId>,
) -> Result<(sys::ncclUniqueId, cim_train::distributed::Rendezvous)> {
    let payload = match world.is_root() {
        true => encode_id(&make_id()?),
        false => Vec::new(),
    };
    let met = rendezvous(world, fingerprint, move || payload, timeout)?;
    Ok((decode_id(met.payload())?, met))
}

/// The buckets of `buckets` not yet handed to the communication stream, `handed` having
/// been.
fn unhanded(buckets: &[Bucket], handed: usize) -> Result<&[Bucket]> {
    buckets.get(handed..).ok_or_else(|| {
        anyhow!(
            "{handed} gradient buckets were handed to NCCL in this step, but finish was given {}: the trainer's bucket plan changed within a step",
            buckets.len()
        )
    })
}

/// NCCL across the ranks' GPUs (see the module documentation).
pub struct NcclCollective {
    rank: usize,
    size: usize,
    comm: sys::ncclComm_t,
    /// Where the all-reduces run, beside the backend's compute stream.
    comm_stream: Arc<CudaStream>,
    /// Recorded on the compute stream before a bucket is summed.
    written: CudaEvent,
    /// Recorded on the communication stream when the buckets are queued.
    summed: CudaEvent,
    /// Host bytes (all_gather) over the rendezvous's connections.
    side: TcpCollective,
    /// Buckets handed to the communication stream since the last finish.
    handed: usize,
}

impl NcclCollective {
    /// Meets the other ranks of `world` (cim-train's rendezvous; every rank passes the same
    /// `fingerprint`, to which the GPU model is added) and opens the NCCL communicator on
    /// `b`'s GPU; waits at most `timeout` for a peer in each host exchange.
    pub fn connect(
        b: &Cuda<Gpu>,
        world: &World,
        fingerprint: &str,
        timeout: Duration,
    ) -> Result<Self> {
        if let Some(reason) = nccl_unavailable_reason() {
            bail!(reason);
        }
        let gpu = b.device();
        let fingerprint = format!("{fingerprint}, backend cim-cuda ({})", gpu.model());
        let ctx = gpu.context();
        // Bound before any NCCL call: ncclGetUniqueId may touch the CUDA runtime, which
        // would otherwise make a primary context on device 0 of a rank-0 process on
        // another GPU.
        ctx.bind_to_thread().context("binding the CUDA context")?;
        let (id, met) = exchange_id(world, &fingerprint, timeout, || {
            nccl::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e))
        })?;
        let comm_stream = ctx
            .new_stream()
            .context("creating the NCCL communication stream")?;
        let written = ctx.new_event(None).context("creating a CUDA event")?;
        let summed = ctx.new_event(None).context("creating a CUDA event")?;
        // The side channel first: nothing can fail after the communicator exists, so it
        // never leaks.
        let side = TcpCollective::new(met, timeout)?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by a successful call; rank and size come from a
        // validated world, the id from rank 0.
        let comm = unsafe {
            nccl::comm_init_rank(
                comm.as_mut_ptr(),
                i32::try_from(world.size).context("WORLD_SIZE exceeds i32")?,
                id,
                world.rank as i32,
            )
            .map_err(|e| {
                nccl_error(
                    &format!(
                        "ncclCommInitRank (rank {} of {}, {})",
                        world.rank,
                        world.size,
                        gpu.name()
                    ),
                    e,
                )
            })?;
            comm.assume_init()
        };
        Ok(NcclCollective {
            rank: world.rank,
            size: world.size,
            comm,
            comm_stream,
            written,
            summed,
            side,
            handed: 0,
        })
    }

    /// Queues the in-place sum of `grads[range]` for each of `ranges` on the communication
    /// stream, after the work queued so far on the compute stream.
    fn queue_sums(
        &mut self,
        b: &Cuda<Gpu>,
        grads: &mut <Cuda<Gpu> as Memory>::Buffer,
        ranges: &[Range<usize>],
    ) -> Result<()> {
        let len = Cuda::<Gpu>::buffer_len(grads);
        if let Some(r) = ranges.iter().find(|r| r.end > len || r.start > r.end) {
            bail!("gradient range {r:?} is not within the buffer of {len} values");
        }
        let compute = b.device().stream();
        self.written
            .record(compute)
            .context("recording the gradients' event")?;
        self.comm_stream
            .wait(&self.written)
            .context("ordering NCCL after the backward")?;
        nccl::group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
        // The group is always closed, then the first error returned: an open group would
        // swallow every later NCCL call of this thread.
        let mut queued = Ok(());
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            let ptr = b.view_mut(grads, r.clone()).ptr() as *mut std::ffi::c_void;
            // SAFETY: `ptr .. ptr + r.len()` f32 lies in `grads` (checked above), which
            // outlives the sum: the compute stream waits for it in `finish`, before any
            // later op, and buffers are freed only after a synchronisation.
            let sum = unsafe {
                nccl::all_reduce(
                    ptr,
                    ptr,
                    r.len(),
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    self.comm_stream.cu_stream() as sys::cudaStream_t,
                )
            }
            .map(|_| ())
            .map_err(|e| nccl_error(&format!("ncclAllReduce of gradients {r:?}"), e));
            if queued.is_ok() {
                queued = sum;
            }
        }
        let ended = nccl::group_end()
            .map(|_| ())
            .map_err(|e| nccl_error("ncclGroupEnd", e));
        queued.and(ended)
    }

    /// Makes the compute stream wait for every sum queued so far.
    fn join(&mut self, b: &Cuda<Gpu>) -> Result<()> {
        self.summed
            .record(&self.comm_stream)
            .context("recording the sums' event")?;
        b.device()
            .stream()
            .wait(&self.summed)
            .context("ordering the optimizer after NCCL")
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // SAFETY: the communicator is ours and destroyed once; pending sums complete first
        // (ncclCommDestroy waits for them).
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}

impl Collective<Cuda<Gpu>> for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(
        &mut self,
        b: &Cuda<Gpu>,
        grads: &mut <Cuda<Gpu> as Memory>::Buffer,
        ranges: &[Range<usize>],
    ) -> Result<()> {
        self.queue_sums(b, grads, ranges)?;
        self.join(b)
    }

    fn bucket_ready(
        &mut self,
        b: &Cuda<Gpu>,
        grads: &mut <Cuda<Gpu> as Memory>::Buffer,
        bucket: &Bucket,
    ) -> Result<()> {
        self.queue_sums(b, grads, &bucket.ranges)?;
        self.handed += 1;
        Ok(())
    }

    fn finish(
        &mut self,
        b: &Cuda<Gpu>,
        grads: &mut <Cuda<Gpu> as Memory>::Buffer,
        buckets: &[Bucket],
    ) -> Result<()> {
        let handed = std::mem::take(&mut self.handed);
        for bucket in unhanded(buckets, handed)? {
            self.queue_sums(b, grads, &bucket.ranges)?;
        }
        self.join(b)
    }

    fn all_gather(&mut self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        Collective::<Cuda<Gpu>>::all_gather(&mut self.side, local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_train::distributed::Master;

    #[test]
    fn an_id_survives_the_payload_and_a_wrong_payload_is_named() {
        let id = sys::ncclUniqueId {
            internal: std::array::from_fn(|i| (i as u8).wrapping_mul(37) as c_char),
        };
        let back = decode_id(&encode_id(&id)).unwrap();
        assert_eq!(back.internal, id.internal);
        let e = decode_id(&[]).unwrap_err().to_string();
        assert!(
            e.contains("payload of 0 bytes") && e.contains("NCCL id"),
            "{e}"
        );
    }

    #[test]
    fn rank_0s_id_reaches_every_rank() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let id = sys::ncclUniqueId {
            internal: std::array::from_fn(|i| (255 - i) as u8 as c_char),
        };
        let ranks: Vec<_> = (0..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let world = World {
                        rank,
                        size: 3,
                        local_rank: rank,
                        master: Some(Master {
                            addr: "127.0.0.1".into(),
                            port,
                        }),
                    };
                    let made = std::cell::Cell::new(false);
                    let (got, _) = exchange_id(&world, "test", Duration::from_secs(30), || {
                        made.set(true);
                        Ok(id)
                    })
                    .unwrap();
                    (got.internal, made.get())
                })
            })
            .collect();
        for (rank, h) in ranks.into_iter().enumerate() {
            let (got, made) = h.join().unwrap();
            assert_eq!(got, id.internal, "rank {rank}");
            assert_eq!(made, rank == 0, "only rank 0 makes the id (rank {rank})");
        }
    }

    #[test]
    fn finish_queues_only_the_buckets_not_yet_handed() {
        let buckets = [Bucket::new(vec![6..8, 4..6]), Bucket::new(vec![0..2, 2..4])];
        assert_eq!(unhanded(&buckets, 0).unwrap().len(), 2);
        assert_eq!(unhanded(&buckets, 1).unwrap(), &buckets[1..]);
        assert!(unhanded(&buckets, 2).unwrap().is_empty());
        let e = unhanded(&buckets, 3).unwrap_err().to_string();
        assert!(e.contains("3 gradient buckets"), "{e}");
    }

    #[test]
    fn a_missing_libnccl_says_how_to_provide_it() {
        match nccl_unavailable_reason() {
            Some(reason) => {
                for needed in ["libnccl.so", "nvidia-nccl-cu13", "LD_LIBRARY_PATH"] {
                    assert!(reason.contains(needed), "{needed}: {reason}");
                }
            }
            None => eprintln!("libnccl is present here: nothing to check"),
        }
    }
}
