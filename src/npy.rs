//! Minimal NumPy `.npy` (format version 1.0) for little-endian float32 arrays:
//! what `qwen-run --dump-logits` writes and the tests read back.
//! Spec: numpy/lib/format.py (magic, u16 header length, a Python dict literal,
//! space padding and '\n' so the data starts at a multiple of 64 bytes).

use std::io::{self, Write};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Writes `data` as a C-order '<f4' array of `shape`.
pub fn write_f32(mut w: impl Write, shape: &[usize], data: &[f32]) -> io::Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "npy: shape {shape:?} holds {n} values, data has {}",
                data.len()
            ),
        ));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' must be a multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let hlen = u16::try_from(header.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "npy: header too long"))?;
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&hlen.to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut buf = Vec::with_capacity(data.len().min(1 << 20) * 4);
    for chunk in data.chunks(1 << 18) {
        buf.clear();
        for &x in chunk {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.flush()
}

/// Writes an f32 array to `path` through a temporary file in the same folder that is
/// renamed over `path` once complete, so a failed write (full disk, bad folder) leaves
/// no partial file. A `path` that exists and is not a regular file (`/dev/stdout`, a
/// pipe) is written directly.
pub fn write_f32_file(path: &std::path::Path, shape: &[usize], data: &[f32]) -> Result<(), String> {
    let direct = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let tmp = if direct {
        path.to_path_buf()
    } else {
        let mut t = std::ffi::OsString::from(".");
        t.push(name);
        t.push(format!(".tmp-{}", std::process::id()));
        path.with_file_name(t)
    };
    let result = (|| {
        let f = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut w = io::BufWriter::new(f);
        write_f32(&mut w, shape, data)
            .and_then(|()| w.flush())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if !direct {
            let f = w
                .into_inner()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            f.sync_all()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            std::fs::rename(&tmp, path).map_err(|e| {
                format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
            })?;
        }
        Ok(())
    })();
    if result.is_err() && !direct {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a C-order '<f4' array (npy v1 or v2): returns (shape, data).
pub fn read_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("npy: bad magic".into());
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("npy: unsupported version {v}")),
    };
    let end = hstart
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or("npy: header runs past the end")?;
    let header =
        std::str::from_utf8(&bytes[hstart..end]).map_err(|_| "npy: header is not UTF-8")?;
    if !header.contains("'descr': '<f4'") {
        return Err(format!("npy: only '<f4' is supported, header is {header}"));
    }
    if header.contains("'fortran_order': True") {
        return Err("npy: fortran order is not supported".into());
    }
    let s = header.find("'shape': (").ok_or("npy: no shape")? + "'shape': (".len();
    let e = s + header[s..].find(')').ok_or("npy: unterminated shape")?;
    let shape: Vec<usize> = header[s..e]
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<usize>()
                .map_err(|_| format!("npy: bad dim '{x}'"))
        })
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[end..];
    if data.len() != n * 4 {
        return Err(format!(
            "npy: shape {shape:?} needs {} data bytes, file has {}",
            n * 4,
            data.len()
        ));
    }
    let vals = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, vals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alignment() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let mut buf = Vec::new();
        write_f32(&mut buf, &[2, 3], &data).unwrap();
        let hlen = u16::from_le_bytes([buf[8], buf[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let (shape, back) = read_f32(&buf).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(back, data);
        assert!(read_f32(&buf[..20]).is_err());
    }
}
