//! /proc/net/dev → `machine.NetworkDeviceStats`: every interface and their sum.

use basalt_api::machine::{NetDev, NetworkDeviceStats};

use super::number;

/// Parses /proc/net/dev: two header lines, then `name: <8 receive counters> <8 transmit
/// counters>`. The colon may touch the first number when it is wide (`eth0:123456`), so lines are
/// split at the colon, not at whitespace. `total` (named `total`) sums every interface, like
/// procfs' `NetDev.Total()` that Talos uses.
pub(super) fn parse(text: &str) -> Result<NetworkDeviceStats, String> {
    let mut devices = Vec::new();
    for line in text.lines() {
        // Header lines contain '|' and no ':'.
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let counters: Vec<&str> = counters.split_whitespace().collect();
        if counters.len() < 16 {
            return Err(format!("{name}: {} counters, expected 16", counters.len()));
        }
        let mut values = [0_u64; 16];
        for (slot, counter) in values.iter_mut().zip(&counters) {
            *slot = number(counter, name)?;
        }
        devices.push(net_dev(name.to_owned(), values));
    }
    let mut sum = [0_u64; 16];
    for device in &devices {
        for (slot, value) in sum.iter_mut().zip(counters_of(device)) {
            *slot = slot.wrapping_add(value);
        }
    }
    Ok(NetworkDeviceStats {
        metadata: None,
        total: Some(net_dev("total".to_owned(), sum)),
        devices,
    })
}

fn net_dev(name: String, v: [u64; 16]) -> NetDev {
    NetDev {
        name,
        rx_bytes: v[0],
        rx_packets: v[1],
        rx_errors: v[2],
        rx_dropped: v[3],
        rx_fifo: v[4],
        rx_frame: v[5],
        rx_compressed: v[6],
        rx_multicast: v[7],
        tx_bytes: v[8],
        tx_packets: v[9],
        tx_errors: v[10],
        tx_dropped: v[11],
        tx_fifo: v[12],
        tx_collisions: v[13],
        tx_carrier: v[14],
        tx_compressed: v[15],
    }
}

fn counters_of(d: &NetDev) -> [u64; 16] {
    [
        d.rx_bytes,
        d.rx_packets,
        d.rx_errors,
        d.rx_dropped,
        d.rx_fifo,
        d.rx_frame,
        d.rx_compressed,
        d.rx_multicast,
        d.tx_bytes,
        d.tx_packets,
        d.tx_errors,
        d.tx_dropped,
        d.tx_fifo,
        d.tx_collisions,
        d.tx_carrier,
        d.tx_compressed,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0:62917473    3424    1    2    3     4          5         6   213034    2011    7    8    9    10      11         12
";

    #[test]
    fn each_interface_is_read_including_a_colon_touching_its_first_number() {
        let stats = parse(FIXTURE).expect("parses");
        assert_eq!(stats.devices.len(), 2);
        let eth = &stats.devices[1];
        assert_eq!(eth.name, "eth0");
        assert_eq!(eth.rx_bytes, 62_917_473);
        assert_eq!(eth.rx_multicast, 6);
        assert_eq!(eth.tx_bytes, 213_034);
        assert_eq!(eth.tx_collisions, 10);
        assert_eq!(eth.tx_compressed, 12);
    }

    #[test]
    fn total_sums_every_interface() {
        let total = parse(FIXTURE).expect("parses").total.expect("total");
        assert_eq!(total.name, "total");
        assert_eq!(total.rx_bytes, 62_920_666);
        assert_eq!(total.tx_packets, 2040);
    }

    #[test]
    fn a_short_line_is_an_error() {
        assert!(parse("eth0: 1 2 3\n").is_err());
    }
}
