//! Parsing the `petrel.*` parameters of the kernel command line.

/// Largest command line the guest reads (bytes, without the NUL).
pub const MAX_CMDLINE: usize = 4096;

/// The parameters the guest understands. Later occurrences win, like Linux's parameters.
pub struct Args<'a> {
    /// `petrel.scenario=NAME`.
    pub scenario: Option<&'a [u8]>,
    /// `petrel.count=N` (raw text; scenarios parse it).
    pub count: Option<&'a [u8]>,
    /// `petrel.sector=N` (raw text; `blk-write`).
    pub sector: Option<&'a [u8]>,
    /// `petrel.pattern=N` (raw text; `blk-write`, `blk-bench`).
    pub pattern: Option<&'a [u8]>,
    /// `petrel.mib=N` (raw text; `blk-bench`).
    pub mib: Option<&'a [u8]>,
    /// `petrel.bytes=N` (raw text; `net-*` frame payload size, `vsock-*` stream length).
    pub bytes: Option<&'a [u8]>,
    /// `petrel.ip=A.B.C.D` (raw text; the guest's IPv4 address for `net-arp`).
    pub ip: Option<&'a [u8]>,
    /// `petrel.peer=A.B.C.D` (raw text; the host's IPv4 address for `net-arp`).
    pub peer: Option<&'a [u8]>,
    /// `petrel.port=N` (raw text; the vsock port the guest connects to on CID 2).
    pub port: Option<&'a [u8]>,
    /// `petrel.listen=N` (raw text; the vsock port the guest listens on).
    pub listen: Option<&'a [u8]>,
}

impl<'a> Args<'a> {
    /// Splits on spaces/tabs/newlines and picks `petrel.*=` tokens.
    pub fn parse(text: &'a [u8]) -> Args<'a> {
        let mut args = Args {
            scenario: None,
            count: None,
            sector: None,
            pattern: None,
            mib: None,
            bytes: None,
            ip: None,
            peer: None,
            port: None,
            listen: None,
        };
        for tok in text.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
            if let Some(v) = tok.strip_prefix(b"petrel.scenario=") {
                args.scenario = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.count=") {
                args.count = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.sector=") {
                args.sector = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.pattern=") {
                args.pattern = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.mib=") {
                args.mib = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.bytes=") {
                args.bytes = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.ip=") {
                args.ip = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.peer=") {
                args.peer = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.port=") {
                args.port = Some(v);
            } else if let Some(v) = tok.strip_prefix(b"petrel.listen=") {
                args.listen = Some(v);
            }
        }
        args
    }
}

/// Parses a decimal u64; None on an empty string, a non-digit or overflow.
pub fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses an IPv4 dotted quad `A.B.C.D` (each part 1-3 decimal digits, at most 255).
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.len() > 3 {
            return None;
        }
        let v = parse_dec(p)?;
        *o = u8::try_from(v).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}
