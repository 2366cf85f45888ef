//! Fuzz target: a volume's bytes through the decoding thread (volume.rs: gzip or plain) and
//! the tar reader (archive.rs: entry names, extension headers, metadata, multivol runs) into
//! a record sink that reads every byte and checks the stream's promises: records come in
//! strictly increasing index order, every begin has its end, and no name is unsafe.
//! The first input byte picks the encoding; the rest is the stored volume.
#![no_main]

use anyhow::Result;
use dupmirror::archive::{Record, RecordSink, RecordStream};
use dupmirror::index::PathIndex;
use dupmirror::naming::Encoding;
use dupmirror::volume::{VolumeReader, VolumeSource};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

#[derive(Default)]
struct Checker {
    last: Option<PathIndex>,
    open: bool,
    bytes: u64,
}

impl RecordSink for Checker {
    fn begin(&mut self, record: &Record) -> Result<()> {
        assert!(!self.open, "begin inside a record");
        assert!(record.index.check_safe().is_ok(), "unsafe index {:?}", record.index);
        if let Some(last) = &self.last {
            assert!(record.index > *last, "{:?} after {:?}", record.index, last);
        }
        self.last = Some(record.index.clone());
        self.open = true;
        Ok(())
    }

    fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        assert!(self.open, "data outside a record");
        self.bytes += std::io::copy(bytes, &mut std::io::sink())?;
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        assert!(self.open, "end without begin");
        self.open = false;
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let encoding = if sel & 1 == 0 {
        Encoding::Plain
    } else {
        Encoding::Gzip
    };
    let mut reader = VolumeReader::spawn(
        VolumeSource {
            name: "fuzz".into(),
            encoding,
            expected_sha1: None,
            raw: Box::new(std::io::Cursor::new(body.to_vec())),
        },
        None,
    );
    let mut stream = RecordStream::new();
    let mut sink = Checker::default();
    let parsed = stream.read_volume(&mut reader, &mut sink);
    let verdict = match &parsed {
        Ok(()) => reader.finish(),
        Err(_) => reader.abandon(),
    };
    if parsed.is_ok() && verdict.is_ok() {
        let _ = stream.close(&mut sink);
    }
});
