//! The writer behind the `tracing` output: stderr, one `write(2)` for all the lines
//! that are waiting.
//!
//! A line is appended to a shared buffer; the thread that finds no write in
//! progress writes the whole buffer, and writes again if more lines arrived
//! meanwhile. Alone, a line is written at once, like an unbuffered stderr; under
//! load, the lines of many requests share one system call. No thread, no wake-ups,
//! nothing to flush at exit: every line is written before the call that wrote the
//! last one returns.

use std::io::Write;
use std::sync::Mutex;

struct Pending {
    lines: Vec<u8>,
    writing: bool,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    lines: Vec::new(),
    writing: false,
});

/// `MakeWriter` for `tracing_subscriber::fmt`: `.with_writer(CombiningStderr::default)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CombiningStderr;

impl Write for CombiningStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A poisoned lock only means a panic elsewhere between two plain updates.
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        pending.lines.extend_from_slice(buf);
        if pending.writing {
            // The thread writing now takes this line along.
            return Ok(buf.len());
        }
        pending.writing = true;
        let mut batch = Vec::new();
        loop {
            std::mem::swap(&mut batch, &mut pending.lines);
            drop(pending);
            // Nowhere to report a failed write to stderr; the lines are dropped.
            let _ = std::io::stderr().write_all(&batch);
            batch.clear();
            pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
            if pending.lines.is_empty() {
                pending.writing = false;
                return Ok(buf.len());
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_from_many_threads_all_arrive_whole() {
        // Writes go to the real stderr; what is checked is that nothing is left
        // behind and no writer gets stuck.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let line = format!("combining-stderr test {t} {i}\n");
                        CombiningStderr.write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let pending = PENDING.lock().unwrap();
        assert!(pending.lines.is_empty() && !pending.writing);
    }
}
