//! /proc/cpuinfo → one `machine.CPUInfo` per logical CPU.

use basalt_api::machine::CpuInfo;

/// Parses /proc/cpuinfo: blank-line-separated blocks of `key<TAB>: value` lines, one block per
/// logical CPU. Blocks without a `processor` line (the trailing `Hardware`/`Revision` block on
/// ARM) are skipped. x86 key names are used; on ARM `Features` fills `flags` and `BogoMIPS`
/// fills `bogo_mips`, other ARM-only keys have no field.
///
/// Unlike Talos, `cpu_cores` is filled when the kernel prints it: it is real data and the field
/// is on the wire anyway.
pub(super) fn parse(text: &str) -> Result<Vec<CpuInfo>, String> {
    let mut cpus = Vec::new();
    let mut current: Option<CpuInfo> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            cpus.extend(current.take());
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        if key == "processor" {
            cpus.extend(current.take());
            current = Some(CpuInfo {
                processor: number(value, "processor")?,
                ..CpuInfo::default()
            });
            continue;
        }
        let Some(cpu) = current.as_mut() else {
            // A key before any `processor` line (or in a trailing non-CPU block): not a CPU.
            continue;
        };
        set(cpu, &key, value)?;
    }
    cpus.extend(current);
    if cpus.is_empty() {
        return Err("no processor entries".to_owned());
    }
    Ok(cpus)
}

/// Stores one `key: value` pair in `cpu`; unknown keys are ignored.
fn set(cpu: &mut CpuInfo, key: &str, value: &str) -> Result<(), String> {
    let text = || value.to_owned();
    let words = || value.split_whitespace().map(str::to_owned).collect();
    match key {
        "vendor_id" => cpu.vendor_id = text(),
        "cpu family" => cpu.cpu_family = text(),
        "model" => cpu.model = text(),
        "model name" => cpu.model_name = text(),
        "stepping" => cpu.stepping = text(),
        "microcode" => cpu.microcode = text(),
        "cpu mhz" => cpu.cpu_mhz = float(value, key)?,
        "cache size" => cpu.cache_size = text(),
        "physical id" => cpu.physical_id = text(),
        "siblings" => cpu.siblings = number(value, key)?,
        "core id" => cpu.core_id = text(),
        "cpu cores" => cpu.cpu_cores = number(value, key)?,
        "apicid" => cpu.apic_id = text(),
        "initial apicid" => cpu.initial_apic_id = text(),
        "fpu" => cpu.fpu = text(),
        "fpu_exception" => cpu.fpu_exception = text(),
        "cpuid level" => cpu.cpu_id_level = number(value, key)?,
        "wp" => cpu.wp = text(),
        "flags" | "features" => cpu.flags = words(),
        "bugs" => cpu.bugs = words(),
        "bogomips" => cpu.bogo_mips = float(value, key)?,
        "clflush size" => cpu.cl_flush_size = number(value, key)?,
        "cache_alignment" => cpu.cache_alignment = number(value, key)?,
        "address sizes" => cpu.address_sizes = text(),
        "power management" => cpu.power_management = text(),
        _ => {}
    }
    Ok(())
}

fn number(value: &str, key: &str) -> Result<u32, String> {
    value
        .parse()
        .map_err(|_| format!("{key}: {value:?} is not an unsigned number"))
}

fn float(value: &str, key: &str) -> Result<f64, String> {
    value
        .parse()
        .map_err(|_| format!("{key}: {value:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two logical CPUs of an x86_64 VM (flags shortened).
    const X86: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 2
microcode\t: 0x1
cpu MHz\t\t: 2299.998
cache size\t: 266240 KB
physical id\t: 0
siblings\t: 2
core id\t\t: 0
cpu cores\t: 2
apicid\t\t: 0
initial apicid\t: 0
fpu\t\t: yes
fpu_exception\t: yes
cpuid level\t: 28
wp\t\t: yes
flags\t\t: fpu vme de pse tsc msr
bugs\t\t: spectre_v1 spectre_v2
bogomips\t: 4599.99
clflush size\t: 64
cache_alignment\t: 64
address sizes\t: 48 bits physical, 57 bits virtual
power management:

processor\t: 1
vendor_id\t: GenuineIntel
cpu MHz\t\t: 2299.998
core id\t\t: 1
apicid\t\t: 1
flags\t\t: fpu vme

";

    /// A two-core ARM64 machine: different keys and a trailing block without `processor`.
    const ARM: &str = "\
processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes
CPU implementer\t: 0x41
CPU part\t: 0xd0c

processor\t: 1
BogoMIPS\t: 48.00
Features\t: fp asimd

Hardware\t: Example board
Revision\t: 0000
";

    #[test]
    fn each_x86_block_becomes_one_cpu_with_typed_fields() {
        let cpus = parse(X86).expect("parses");
        assert_eq!(cpus.len(), 2);
        let cpu = &cpus[0];
        assert_eq!(cpu.processor, 0);
        assert_eq!(cpu.vendor_id, "GenuineIntel");
        assert_eq!(cpu.cpu_family, "6");
        assert_eq!(cpu.model, "207");
        assert_eq!(cpu.model_name, "Intel(R) Xeon(R) Processor");
        assert_eq!(cpu.microcode, "0x1");
        assert_eq!(cpu.cpu_mhz, 2299.998);
        assert_eq!(cpu.cache_size, "266240 KB");
        assert_eq!(cpu.siblings, 2);
        assert_eq!(cpu.cpu_cores, 2);
        assert_eq!(cpu.initial_apic_id, "0");
        assert_eq!(cpu.cpu_id_level, 28);
        assert_eq!(cpu.flags, ["fpu", "vme", "de", "pse", "tsc", "msr"]);
        assert_eq!(cpu.bugs, ["spectre_v1", "spectre_v2"]);
        assert_eq!(cpu.bogo_mips, 4599.99);
        assert_eq!(cpu.cl_flush_size, 64);
        assert_eq!(cpu.cache_alignment, 64);
        assert_eq!(cpu.address_sizes, "48 bits physical, 57 bits virtual");
        assert_eq!(cpu.power_management, "");
        assert_eq!(cpus[1].processor, 1);
        assert_eq!(cpus[1].apic_id, "1");
    }

    #[test]
    fn arm_features_become_flags_and_the_hardware_block_is_skipped() {
        let cpus = parse(ARM).expect("parses");
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].flags, ["fp", "asimd", "evtstrm", "aes"]);
        assert_eq!(cpus[1].bogo_mips, 48.0);
    }

    #[test]
    fn a_garbled_number_is_an_error_naming_the_key() {
        let err = parse("processor\t: 0\nsiblings\t: many\n").expect_err("bad number");
        assert!(err.starts_with("siblings"), "{err}");
    }
}
