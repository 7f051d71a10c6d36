//! Global load shedding: whether a new INVITE is refused with 503 because the process as a
//! whole is full (calls in progress), falling behind (event-loop lag) or out of CPU. Plain
//! data with time and CPU time passed in; the core's one-second sweeper feeds it.

use std::time::Duration;

use tokio::time::Instant;

/// The process's CPU use, as a percentage of every core it may run on, over the last sample.
#[derive(Debug)]
pub struct CpuMeter {
    cores: u32,
    last: Option<(Duration, Instant)>,
}

impl CpuMeter {
    pub fn new(cores: u32) -> Self {
        CpuMeter {
            cores: cores.max(1),
            last: None,
        }
    }

    /// Takes the process's total CPU time at `now`; the use since the previous sample (none
    /// for the first, or when no wall time passed).
    pub fn sample(&mut self, cpu_time: Duration, now: Instant) -> Option<u32> {
        let previous = self.last.replace((cpu_time, now));
        let (last_cpu, last_at) = previous?;
        let wall = now.saturating_duration_since(last_at);
        if wall.is_zero() {
            return None;
        }
        let used = cpu_time.saturating_sub(last_cpu);
        let percent = used.as_secs_f64() / wall.as_secs_f64() / f64::from(self.cores) * 100.0;
        Some(percent.round().min(100.0) as u32)
    }
}

/// The process's user and system CPU time so far.
pub fn process_cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given, which points to
    // enough space; it is read only when the call says it succeeded.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The cores this process may run on.
pub fn available_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Where the process stands, as the sweeper last measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub calls: u64,
    pub lag: Duration,
    pub cpu_percent: u32,
}

/// The limits of `[limits]` that shed load; zero turns one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SheddingLimits {
    pub max_calls: u64,
    pub max_lag: Duration,
    pub max_cpu_percent: u32,
}

/// Why a new call would be shed now, as the 503's reason phrase says it; None: it is not.
pub fn shed_reason(limits: &SheddingLimits, load: &Load) -> Option<&'static str> {
    if limits.max_calls > 0 && load.calls >= limits.max_calls {
        return Some("Service Unavailable (overloaded: calls in progress)");
    }
    if !limits.max_lag.is_zero() && load.lag > limits.max_lag {
        return Some("Service Unavailable (overloaded: falling behind)");
    }
    if limits.max_cpu_percent > 0 && load.cpu_percent >= limits.max_cpu_percent {
        return Some("Service Unavailable (overloaded: CPU)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_is_the_share_of_all_cores_since_the_last_sample() {
        let start = Instant::now();
        let mut meter = CpuMeter::new(2);
        assert_eq!(meter.sample(Duration::from_secs(10), start), None);
        // 1.5 s of CPU in 1 s of wall time on 2 cores: 75 %.
        let at = start + Duration::from_secs(1);
        assert_eq!(meter.sample(Duration::from_millis(11_500), at), Some(75));
        // No wall time: no figure, rather than a division by zero.
        assert_eq!(meter.sample(Duration::from_millis(11_600), at), None);
        // Idle for 2 s.
        assert_eq!(
            meter.sample(Duration::from_millis(11_600), at + Duration::from_secs(2)),
            Some(0)
        );
        // More CPU than cores × wall (threads the kernel accounts late) is still 100 %.
        assert_eq!(
            meter.sample(Duration::from_secs(20), at + Duration::from_secs(3)),
            Some(100)
        );
    }

    #[test]
    fn each_limit_sheds_with_its_own_reason_and_zero_turns_it_off() {
        let limits = SheddingLimits {
            max_calls: 10,
            max_lag: Duration::from_millis(500),
            max_cpu_percent: 90,
        };
        let calm = Load {
            calls: 9,
            lag: Duration::from_millis(500),
            cpu_percent: 89,
        };
        assert_eq!(shed_reason(&limits, &calm), None);
        let full = Load { calls: 10, ..calm };
        assert!(shed_reason(&limits, &full).unwrap().contains("calls"));
        let behind = Load {
            lag: Duration::from_millis(501),
            ..calm
        };
        assert!(shed_reason(&limits, &behind).unwrap().contains("behind"));
        let busy = Load {
            cpu_percent: 90,
            ..calm
        };
        assert!(shed_reason(&limits, &busy).unwrap().contains("CPU"));
        let off = SheddingLimits {
            max_calls: 0,
            max_lag: Duration::ZERO,
            max_cpu_percent: 0,
        };
        let extreme = Load {
            calls: u64::MAX,
            lag: Duration::from_secs(60),
            cpu_percent: 100,
        };
        assert_eq!(shed_reason(&off, &extreme), None);
    }

    #[test]
    fn the_process_cpu_time_grows_while_it_works() {
        let before = process_cpu_time().unwrap();
        let mut x = 0u64;
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time().unwrap() > before);
    }
}
