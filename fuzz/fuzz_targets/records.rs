//! Fuzz target: a volume's bytes through the decoding (decode/volume.rs: gzip or plain, on
//! a helper thread or inline) and the tar reader (decode/tar.rs, decode/records.rs: entry
//! names, extension headers, metadata, multivol runs) into a record sink that reads every
//! byte and checks the stream's promises: records come in strictly increasing index order,
//! every begin has its end, and no name is unsafe.
//! The first input byte picks the encoding (bit 0: plain or gzip) and the read-ahead (bit 1:
//! a helper thread as for a set read in order, or inline as for a volume read apart); the
//! rest is the stored volume.
#![no_main]

use anyhow::Result;
use dupmirror::decode::records::{Record, RecordSink, RecordStream};
use dupmirror::decode::volume::{DecodedFile, Encoding, ReadAhead, VolumeSource};
use dupmirror::index::PathIndex;
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
        assert!(
            record.index.check_safe().is_ok(),
            "unsafe index {:?}",
            record.index
        );
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
    let read_ahead = if sel & 2 == 0 {
        ReadAhead::Volume
    } else {
        ReadAhead::Inline
    };
    let mut reader = DecodedFile::spawn(
        VolumeSource {
            name: "fuzz".into(),
            encoding,
            expected_sha1: None,
            named_time: None,
            raw: Box::new(std::io::Cursor::new(body.to_vec())),
            read_ahead,
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
