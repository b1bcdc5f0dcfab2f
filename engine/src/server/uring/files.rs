//! File operations the service asks for (WRITE / WRITEV / READ / FSYNC on match files,
//! with the opcodes of `[file]`) and the completions of all file operations.

use super::*;

impl<'a> Worker<'a> {
    /// Executes one file request of the service; a request the ring cannot take is
    /// completed at once with the error.
    pub(super) fn exec_file<S: Service>(&mut self, r: Req, svc: &mut S) {
        match r {
            Req::Write {
                fd,
                op,
                buf,
                len,
                off,
                rw_flags,
                token,
            } => {
                let op = op.unwrap_or(self.cfg.file.write_op);
                if let Err(e) = self.files.write(
                    fileops::Fd(fd),
                    op,
                    buf,
                    len,
                    off,
                    rw_flags,
                    ctx(K_SERVICE_FILE, ConnId(token)),
                ) {
                    let msg = format!("{e:?}");
                    svc.file_done(
                        token,
                        Err(io::Error::other(msg)),
                        e.into_slot(),
                        &mut self.io,
                    );
                }
            }
            Req::WriteVec {
                fd,
                buf,
                start,
                len,
                off,
                rw_flags,
                token,
            } => {
                let op = self.cfg.file.write_op;
                if let Err((e, buf)) = self.files.write_vec(
                    fileops::Fd(fd),
                    op,
                    buf,
                    start,
                    len,
                    off,
                    rw_flags,
                    ctx(K_SERVICE_FILE, ConnId(token)),
                ) {
                    let msg = format!("{e:?}");
                    svc.file_done_vec(token, Err(io::Error::other(msg)), buf, &mut self.io);
                }
            }
            Req::Read {
                fd,
                buf,
                len,
                off,
                token,
            } => {
                let op = self.cfg.file.read_op;
                if let Err(e) = self.files.read(
                    fileops::Fd(fd),
                    op,
                    buf,
                    len,
                    off,
                    0,
                    ctx(K_SERVICE_FILE, ConnId(token)),
                ) {
                    let msg = format!("{e:?}");
                    svc.file_done(
                        token,
                        Err(io::Error::other(msg)),
                        e.into_slot(),
                        &mut self.io,
                    );
                }
            }
            Req::Fsync {
                fd,
                datasync,
                token,
            } => {
                if let Err(e) = self.files.fsync(
                    fileops::Fd(fd),
                    datasync,
                    ctx(K_SERVICE_FILE, ConnId(token)),
                ) {
                    let msg = format!("{e:?}");
                    svc.file_done(token, Err(io::Error::other(msg)), None, &mut self.io);
                }
            }
            _ => unreachable!("exec_file takes file requests only"),
        }
    }

    pub(super) fn on_file<S: Service>(&mut self, c: fileops::Completion, svc: &mut S) {
        match ctx_kind(c.tag) {
            K_FILE_READ => {
                let id = ctx_conn(c.tag);
                self.op_done(id, true);
                let Some(mut slot) = c.buf else { return };
                let direct = self.cfg.net.serve_read == ServeRead::Direct;
                let chunk_max = self.cfg.net.serve_chunk_bytes as u64;
                let Some(conn) = self.conn_mut(id) else {
                    return;
                };
                if conn.state == State::Cancelling || conn.state == State::Closed {
                    return self.maybe_close(id);
                }
                let Some(Out::File(f)) = conn.out.front_mut() else {
                    return;
                };
                match c.result {
                    Ok(n) => {
                        let skip = if direct { (f.off & 4095) as usize } else { 0 };
                        let avail = (n as usize).saturating_sub(skip);
                        let take = (avail as u64).min(f.remaining).min(chunk_max) as usize;
                        if take == 0 {
                            let e = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "replay file shorter than the range being sent",
                            );
                            return self.fail_file(id, e, svc);
                        }
                        slot.set_len(skip + take);
                        f.chunk = take as u64;
                        self.send_buf(id, NetBuf::Slot(slot), skip);
                    }
                    Err(e) => self.fail_file(id, e, svc),
                }
            }
            K_SERVICE_FILE => match c.heap {
                Some(v) => svc.file_done_vec(c.tag & ((1 << 56) - 1), c.result, v, &mut self.io),
                None => svc.file_done(c.tag & ((1 << 56) - 1), c.result, c.buf, &mut self.io),
            },
            _ => {}
        }
    }
}
