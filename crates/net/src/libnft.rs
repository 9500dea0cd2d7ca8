//! nftables scripts run in this process through libnftables (Debian's `libnftables1`, which
//! the `nft` command itself uses), loaded at run time: one context kept for the node's life
//! saves a process start and its library loading per change (a change at 10,000 Services: about
//! 13 ms instead of 20-40 ms). Without the library, the `nft` command runs each script.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use crate::Error;

type NewFn = unsafe extern "C" fn(u32) -> *mut c_void;
type RunFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type BufferFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBufferFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type FreeFn = unsafe extern "C" fn(*mut c_void);

/// A libnftables context: its netlink socket belongs to the network namespace of the thread
/// that made it.
pub struct Context {
    ctx: *mut c_void,
    run: RunFn,
    error: GetBufferFn,
    free: FreeFn,
}

// SAFETY: a context is used by one thread at a time (`&mut self` on every call); libnftables
// keeps no thread-local state in it.
unsafe impl Send for Context {}

fn symbol<T: Copy>(lib: *mut c_void, name: &CStr) -> Option<T> {
    // SAFETY: `lib` is a handle dlopen returned; the symbol's type is libnftables' documented
    // signature, which `T` spells.
    let ptr = unsafe { libc::dlsym(lib, name.as_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `T` is a function pointer type of the same size as the symbol's address.
    Some(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&ptr) })
}

impl Context {
    /// A new context, or None when libnftables is not on the machine.
    pub fn open() -> Option<Context> {
        // SAFETY: dlopen with a constant library name; the handle is never closed (the
        // library stays for the process's life).
        let lib = unsafe {
            libc::dlopen(
                c"libnftables.so.1".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            )
        };
        if lib.is_null() {
            return None;
        }
        let new: NewFn = symbol(lib, c"nft_ctx_new")?;
        let buffer_output: BufferFn = symbol(lib, c"nft_ctx_buffer_output")?;
        let buffer_error: BufferFn = symbol(lib, c"nft_ctx_buffer_error")?;
        let run: RunFn = symbol(lib, c"nft_run_cmd_from_buffer")?;
        let error: GetBufferFn = symbol(lib, c"nft_ctx_get_error_buffer")?;
        let free: FreeFn = symbol(lib, c"nft_ctx_free")?;
        // SAFETY: NFT_CTX_DEFAULT (0); the context is freed in Drop.
        let ctx = unsafe { new(0) };
        if ctx.is_null() {
            return None;
        }
        // SAFETY: a live context; output and errors go to buffers instead of stdout/stderr.
        unsafe {
            buffer_output(ctx);
            buffer_error(ctx);
        }
        Some(Context {
            ctx,
            run,
            error,
            free,
        })
    }

    /// Runs `script` as `nft -f` would: one transaction.
    pub fn run(&mut self, script: &str) -> Result<(), Error> {
        let text =
            CString::new(script).map_err(|_| Error::Nft("a script with a NUL byte".into()))?;
        // SAFETY: a live context and a NUL-terminated script that outlives the call.
        let rc = unsafe { (self.run)(self.ctx, text.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: the error buffer is a NUL-terminated string owned by the context, valid
        // until the next call; it is copied at once.
        let message = unsafe {
            let ptr = (self.error)(self.ctx);
            if ptr.is_null() {
                String::new()
            } else {
                CStr::from_ptr(ptr).to_string_lossy().into_owned()
            }
        };
        let first: String = message.lines().take(6).collect::<Vec<_>>().join("\n");
        Err(Error::Nft(format!(
            "libnftables ({} lines): {first}",
            script.lines().count()
        )))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context is live and not used again.
        unsafe { (self.free)(self.ctx) }
    }
}
