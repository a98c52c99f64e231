//! /proc/stat → `machine.SystemStat`: CPU times (seconds), interrupts, context switches, process
//! counters and softirqs.

use basalt_api::machine::{CpuStat, SoftIrqStat, SystemStat};

use super::number;

/// The largest core count accepted (the kernel's own `NR_CPUS` limit).
const MAX_CPUS: usize = 8192;

/// Parses /proc/stat. CPU times are converted from clock ticks (`clock_ticks` per second) to
/// seconds; `cpu` is indexed by core number (a core missing from the file, e.g. offline, is left
/// all zero). Lines the message has no field for are ignored.
pub(super) fn parse(text: &str, clock_ticks: u64) -> Result<SystemStat, String> {
    if clock_ticks == 0 {
        return Err("clock ticks per second must not be zero".to_owned());
    }
    let mut stat = SystemStat::default();
    let mut seen_cpu = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else {
            continue;
        };
        let values: Vec<&str> = fields.collect();
        match key {
            "cpu" => {
                stat.cpu_total = Some(cpu_times(&values, clock_ticks, key)?);
                seen_cpu = true;
            }
            _ if key.starts_with("cpu") => {
                let index: usize = key[3..]
                    .parse()
                    .map_err(|_| format!("{key:?} is not a cpu line"))?;
                // Linux supports at most 8192 CPUs; refuse absurd indexes instead of allocating.
                if index >= MAX_CPUS {
                    return Err(format!("{key:?}: core number out of range"));
                }
                let times = cpu_times(&values, clock_ticks, key)?;
                if stat.cpu.len() <= index {
                    stat.cpu.resize(index + 1, CpuStat::default());
                }
                stat.cpu[index] = times;
            }
            "intr" => {
                let (total, each) = total_and_rest(&values, key)?;
                stat.irq_total = total;
                stat.irq = each;
            }
            "softirq" => {
                let (total, each) = total_and_rest(&values, key)?;
                stat.soft_irq_total = total;
                stat.soft_irq = Some(soft_irqs(&each));
            }
            "ctxt" => stat.context_switches = single(&values, key)?,
            "btime" => stat.boot_time = single(&values, key)?,
            "processes" => stat.process_created = single(&values, key)?,
            "procs_running" => stat.process_running = single(&values, key)?,
            "procs_blocked" => stat.process_blocked = single(&values, key)?,
            _ => {}
        }
    }
    if !seen_cpu {
        return Err("no cpu line".to_owned());
    }
    Ok(stat)
}

/// `user nice system idle iowait irq softirq steal guest guest_nice`, in ticks → seconds.
/// Older kernels print fewer columns; the missing ones are 0.
fn cpu_times(values: &[&str], clock_ticks: u64, key: &str) -> Result<CpuStat, String> {
    let mut seconds = [0.0_f64; 10];
    for (slot, value) in seconds.iter_mut().zip(values) {
        // Tick counts stay far below 2^53, so the conversion to f64 is exact.
        *slot = number(value, key)? as f64 / clock_ticks as f64;
    }
    let [
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        soft_irq,
        steal,
        guest,
        guest_nice,
    ] = seconds;
    Ok(CpuStat {
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        soft_irq,
        steal,
        guest,
        guest_nice,
    })
}

/// `intr`/`softirq` lines: a total followed by one counter per interrupt.
fn total_and_rest(values: &[&str], key: &str) -> Result<(u64, Vec<u64>), String> {
    let (total, rest) = values
        .split_first()
        .ok_or_else(|| format!("{key}: missing total"))?;
    let rest = rest
        .iter()
        .map(|value| number(value, key))
        .collect::<Result<_, _>>()?;
    Ok((number(total, key)?, rest))
}

/// The ten softirq counters in kernel order; absent ones are 0.
fn soft_irqs(each: &[u64]) -> SoftIrqStat {
    let at = |i: usize| each.get(i).copied().unwrap_or(0);
    SoftIrqStat {
        hi: at(0),
        timer: at(1),
        net_tx: at(2),
        net_rx: at(3),
        block: at(4),
        block_io_poll: at(5),
        tasklet: at(6),
        sched: at(7),
        hrtimer: at(8),
        rcu: at(9),
    }
}

fn single(values: &[&str], key: &str) -> Result<u64, String> {
    let value = values
        .first()
        .ok_or_else(|| format!("{key}: missing value"))?;
    number(value, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/stat of a two-core machine (the intr line shortened).
    const FIXTURE: &str = "\
cpu  41834 0 9432 145815 967 0 88 44 0 0
cpu0 19405 0 4229 75209 242 0 12 18 0 0
cpu1 22429 0 5203 70605 724 0 75 25 1 2
intr 417362 0 0 15 198
ctxt 556814
btime 1795316750
processes 24439
procs_running 3
procs_blocked 1
softirq 217068 1 37891 4 3158 31519 0 215 60192 0 84089
";

    #[test]
    fn cpu_times_are_converted_to_seconds() {
        let stat = parse(FIXTURE, 100).expect("parses");
        let total = stat.cpu_total.expect("total");
        assert_eq!(total.user, 418.34);
        assert_eq!(total.system, 94.32);
        assert_eq!(total.idle, 1458.15);
        assert_eq!(total.steal, 0.44);
        assert_eq!(stat.cpu.len(), 2);
        assert_eq!(stat.cpu[1].user, 224.29);
        assert_eq!(stat.cpu[1].guest, 0.01);
        assert_eq!(stat.cpu[1].guest_nice, 0.02);
    }

    #[test]
    fn counters_are_read_as_is() {
        let stat = parse(FIXTURE, 100).expect("parses");
        assert_eq!(stat.irq_total, 417_362);
        assert_eq!(stat.irq, [0, 0, 15, 198]);
        assert_eq!(stat.context_switches, 556_814);
        assert_eq!(stat.boot_time, 1_795_316_750);
        assert_eq!(stat.process_created, 24_439);
        assert_eq!(stat.process_running, 3);
        assert_eq!(stat.process_blocked, 1);
        assert_eq!(stat.soft_irq_total, 217_068);
        let soft = stat.soft_irq.expect("softirq");
        assert_eq!(
            (soft.hi, soft.timer, soft.net_tx, soft.net_rx),
            (1, 37_891, 4, 3158)
        );
        assert_eq!(
            (soft.block, soft.block_io_poll, soft.tasklet),
            (31_519, 0, 215)
        );
        assert_eq!((soft.sched, soft.hrtimer, soft.rcu), (60_192, 0, 84_089));
    }

    #[test]
    fn a_gap_in_core_numbers_leaves_a_zero_entry() {
        let stat = parse("cpu 1 1 1 1\ncpu0 1 0 0 0\ncpu2 2 0 0 0\n", 1).expect("parses");
        assert_eq!(stat.cpu.len(), 3);
        assert_eq!(stat.cpu[1], CpuStat::default());
        assert_eq!(stat.cpu[2].user, 2.0);
    }

    #[test]
    fn garbled_text_is_an_error() {
        assert!(parse("ctxt 5\n", 100).is_err(), "no cpu line");
        assert!(parse("cpu 1 x 3\n", 100).is_err());
        assert!(parse("cpuX 1 2 3\ncpu 1 2 3\n", 100).is_err());
    }
}
