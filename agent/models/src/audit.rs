//! Placement audit: every tensor a shard touches (parameters, gradients, optimizer state,
//! batch tensors) must live on the agent's pinned device. The seed system mixed cpu and
//! cuda:0 tensors; this check turns that into an error naming the tensors instead of a
//! silent slowdown or a crash deep inside libtorch.
//!
//! The caller gathers the tensors (`vs.variables()`, optimizer buffers, the batch) and
//! passes them as `(name, &Tensor)` pairs; undefined tensors (e.g. a gradient not yet
//! created) are skipped.

use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// A tensor found off the pinned device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    /// The name the caller gave it.
    pub name: String,
    /// Where it actually is.
    pub device: Device,
}

/// Every defined tensor in `tensors` that is not on `pinned`, in the order given.
pub fn find_misplaced<'a, S, I>(pinned: Device, tensors: I) -> Vec<Misplaced>
where
    S: AsRef<str>,
    I: IntoIterator<Item = (S, &'a Tensor)>,
{
    tensors
        .into_iter()
        .filter(|(_, t)| t.defined() && t.device() != pinned)
        .map(|(name, t)| Misplaced { name: name.as_ref().to_owned(), device: t.device() })
        .collect()
}

/// How many misplaced tensors an error message names.
const EXAMPLES: usize = 5;

/// `Ok` when every defined tensor is on `pinned`; otherwise [`Error::Placement`] with the
/// count and the first few as `name@device`.
pub fn ensure_on_device<'a, S, I>(pinned: Device, tensors: I) -> Result<()>
where
    S: AsRef<str>,
    I: IntoIterator<Item = (S, &'a Tensor)>,
{
    let bad = find_misplaced(pinned, tensors);
    if bad.is_empty() {
        return Ok(());
    }
    let mut examples =
        bad.iter().take(EXAMPLES).map(|m| format!("{}@{:?}", m.name, m.device)).collect::<Vec<_>>().join(", ");
    if bad.len() > EXAMPLES {
        examples.push_str(", …");
    }
    Err(Error::Placement { device: format!("{pinned:?}"), count: bad.len(), examples })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn audit_accepts_tensors_on_the_pinned_device() {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([4], (Kind::Int64, Device::Cpu));
        let undefined = a.grad(); // no gradient yet: skipped, not misplaced
        assert!(!undefined.defined());
        let list = [("model.w", &a), ("batch.ids", &b), ("model.w.grad", &undefined)];
        assert!(find_misplaced(Device::Cpu, list).is_empty());
        ensure_on_device(Device::Cpu, list).unwrap();
    }

    #[test]
    fn audit_reports_tensors_off_the_pinned_device() {
        // A CPU-only host cannot allocate on CUDA, so pin the audit to cuda:0 and give it
        // CPU tensors: every one of them is off the pinned device.
        let a = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let names: Vec<String> = (0..7).map(|i| format!("opt.state.{i}")).collect();
        let mut list: Vec<(&str, &Tensor)> = vec![("model.embed", &a), ("batch.mask", &b)];
        list.extend(names.iter().map(|n| (n.as_str(), &a)));

        let bad = find_misplaced(Device::Cuda(0), list.iter().copied());
        assert_eq!(bad.len(), 9);
        assert_eq!(bad[0], Misplaced { name: "model.embed".into(), device: Device::Cpu });

        let err = ensure_on_device(Device::Cuda(0), list.iter().copied()).unwrap_err();
        match &err {
            Error::Placement { device, count, examples } => {
                assert_eq!(device, "Cuda(0)");
                assert_eq!(*count, 9);
                assert!(examples.starts_with("model.embed@Cpu, batch.mask@Cpu"), "{examples}");
                assert!(examples.ends_with('…'), "{examples}");
            }
            other => panic!("expected a placement error, got {other}"),
        }
        assert!(!err.is_out_of_memory());
    }
}
