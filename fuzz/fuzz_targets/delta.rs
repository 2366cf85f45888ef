//! Fuzz target: applying a librsync delta (delta.rs) to a basis file. The first two bytes
//! give the basis length, the basis follows, the rest is the delta (with the magic put in
//! front when the length's low bit is set, so the fuzzer spends its time on the commands).
//! Patching must end in output or an error, never a crash or a hang; the output is counted,
//! not kept, and bounded (1 GiB) as dupmirror bounds it by the file's new signature.
#![no_main]

use dupmirror::decode::delta::{patch, DELTA_MAGIC};
use libfuzzer_sys::fuzz_target;
use std::io::{Seek, SeekFrom, Write};
use std::sync::{LazyLock, Mutex};

static BASIS: LazyLock<Mutex<std::fs::File>> = LazyLock::new(|| {
    let path = std::env::temp_dir().join(format!("dupmirror-fuzz-basis-{}", std::process::id()));
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("basis file");
    let _ = std::fs::remove_file(&path);
    Mutex::new(f)
});

struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]);
    let rest = &data[2..];
    let (basis, delta) = rest.split_at((n as usize).min(rest.len()));
    let mut input = Vec::new();
    if n & 1 == 1 {
        input.extend_from_slice(&DELTA_MAGIC);
    }
    input.extend_from_slice(delta);
    let guard = BASIS.lock().unwrap();
    let mut f = guard.try_clone().unwrap();
    f.set_len(0).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(basis).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut out = Count(0);
    let mut buf = [0u8; 4096];
    let _ = patch(f, &mut &input[..], &mut out, &mut buf, 1 << 30);
});
