//! The `poweroff` and `acpi-reset` scenarios: ACPI S5 through the FADT's sleep control register,
//! and reset through the FADT's reset register (hardware-reduced ACPI).

use crate::acpi::{self, Fadt, Gas};
use crate::io::{mmio_write16, mmio_write32, mmio_write8, outb, outl, outw, spin_until};
use crate::out::{line, nl, put, put_dec, put_hex};

/// S5 SLP_TYP when the DSDT has no usable `\_S5` package.
const DEFAULT_S5_SLP_TYP: u8 = 5;
/// SLP_EN in the sleep control register.
const SLP_EN: u64 = 1 << 5;
/// How long to keep running after the write before declaring failure (TSC time).
const GRACE_MS: u64 = 100;

/// Writes `value` (shifted by the GAS bit offset) to a system-I/O or system-memory GAS with
/// an 8/16/32-bit access (GAS access size 1/2/3, or bit width 8/16/32 when it is 0).
fn gas_write(g: &Gas, value: u64) -> Result<(), &'static [u8]> {
    let size = g.access().ok_or(b"unsupported access size".as_slice())?;
    if g.bit_offset >= 32 {
        return Err(b"bit offset too large");
    }
    let v = value << g.bit_offset;
    match (g.space, size) {
        (1, _) if g.addr > 0xffff => Err(b"port above 0xffff"),
        (1, 1) => {
            outb(g.addr as u16, v as u8);
            Ok(())
        }
        (1, 2) => {
            outw(g.addr as u16, v as u16);
            Ok(())
        }
        (1, 3) => {
            outl(g.addr as u16, v as u32);
            Ok(())
        }
        (0, _) if g.addr == 0 || g.addr > 0xffff_fffc => Err(b"address outside 1..4GiB"),
        (0, 1) => {
            mmio_write8(g.addr, v as u8);
            Ok(())
        }
        (0, 2) => {
            mmio_write16(g.addr, v as u16);
            Ok(())
        }
        (0, 3) => {
            mmio_write32(g.addr, v as u32);
            Ok(())
        }
        (0 | 1, _) => Err(b"64-bit access unsupported"),
        _ => Err(b"unsupported address space"),
    }
}

/// ` port=0x..` (system I/O) or ` addr=0x..` (anything else).
fn put_where(g: &Gas) {
    put(if g.space == 1 { b" port=" } else { b" addr=" });
    put_hex(g.addr);
}

/// The FADT, or None after printing `<prefix> error ...`.
fn find_fadt(boot_params: u64, prefix: &[u8]) -> Option<(acpi::Mem, Fadt)> {
    let found = acpi::discover(boot_params, false)
        .and_then(|a| a.fadt.map(|t| (a.mem, acpi::fadt(&a.mem, &t))));
    if found.is_none() {
        put(prefix);
        line(b" error no FADT");
    }
    found
}

/// `poweroff`: writes (SLP_TYP(S5) << 2) | SLP_EN to the sleep control register.
pub fn poweroff(boot_params: u64) {
    if let Some((mem, f)) = find_fadt(boot_params, b"POWEROFF") {
        let slp_typ = match f.dsdt() {
            0 => {
                line(b"ACPI error fadt has no dsdt");
                DEFAULT_S5_SLP_TYP
            }
            dsdt => acpi::dsdt_s5(&mem, dsdt, false).unwrap_or(DEFAULT_S5_SLP_TYP),
        };
        match f.sleep_control.filter(|g| g.addr != 0) {
            None => line(b"POWEROFF error no sleep control register"),
            Some(g) => {
                let value = (u64::from(slp_typ) << 2) | SLP_EN;
                put(b"POWEROFF via=sleep-control");
                put_where(&g);
                put(b" value=");
                put_hex(value);
                put(b" slp_typ=");
                put_dec(u64::from(slp_typ));
                nl();
                match gas_write(&g, value) {
                    Ok(()) => {
                        spin_until(GRACE_MS, || false);
                    }
                    Err(e) => {
                        put(b"POWEROFF error ");
                        line(e);
                    }
                }
            }
        }
    }
    line(b"POWEROFF failed");
}

/// `acpi-reset`: writes the FADT's reset value to its reset register.
pub fn acpi_reset(boot_params: u64) {
    if let Some((_, f)) = find_fadt(boot_params, b"RESET") {
        match f.reset.filter(|(g, _)| g.addr != 0) {
            None => line(b"RESET error no reset register"),
            Some((g, value)) => {
                if f.flags.unwrap_or(0) & (1 << 10) == 0 {
                    line(b"ACPI error fadt RESET_REG_SUP (flags bit 10) not set");
                }
                put(b"RESET via=fadt");
                put_where(&g);
                put(b" value=");
                put_hex(u64::from(value));
                nl();
                match gas_write(&g, u64::from(value)) {
                    Ok(()) => {
                        spin_until(GRACE_MS, || false);
                    }
                    Err(e) => {
                        put(b"RESET error ");
                        line(e);
                    }
                }
            }
        }
    }
    line(b"RESET failed");
}
