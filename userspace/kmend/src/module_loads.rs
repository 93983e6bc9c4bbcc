//! Modules as they load, from the kernel's uevents.
//!
//! A fix to module code waits while its module is not loaded (the plan
//! holds it back: `policy::HeldBack::ModuleNotLoaded`). The daemon listens
//! for the uevent the kernel sends once a module is live
//! (`add@/module/<name>`, after its init) and checks at once when it is
//! one it waits for, so that a module loaded on demand runs unfixed for
//! the time of one update rather than until the next interval.
//!
//! The socket is netlink-sys's (tokio); a uevent is a few NUL-separated
//! `KEY=value` fields after a `action@devpath` header, parsed here in a
//! few lines (udev's own parser is not a library a static binary can use).

use netlink_sys::{
    AsyncSocket as _,
    AsyncSocketExt as _,
    SocketAddr,
    TokioSocket,
    protocols::NETLINK_KOBJECT_UEVENT,
};

/// The kernel's uevent multicast group (udev's is 2).
const KERNEL_GROUP: u32 = 1;

/// A listener for module loads.
pub struct ModuleLoads {
    socket: TokioSocket,
}

impl ModuleLoads {
    /// Starts listening (from now on; earlier loads are not reported).
    /// Call inside a tokio runtime.
    pub fn listen() -> std::io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_KOBJECT_UEVENT)?;
        socket.socket_mut().bind(&SocketAddr::new(0, KERNEL_GROUP))?;
        Ok(Self { socket })
    }

    /// The name of the next module that loads.
    pub async fn next(&mut self) -> std::io::Result<String> {
        loop {
            let (message, _) = self.socket.recv_from_full().await?;
            if let Some(name) = loaded_module(&message) {
                return Ok(name);
            }
        }
    }
}

/// The module a uevent says has loaded, if it says that.
pub fn loaded_module(message: &[u8]) -> Option<String> {
    let mut fields = message.split(|&b| b == 0).filter_map(|f| std::str::from_utf8(f).ok());
    let header = fields.next()?;
    let name = header.strip_prefix("add@/module/")?;
    let mut subsystem = None;
    for field in fields {
        if let Some(s) = field.strip_prefix("SUBSYSTEM=") {
            subsystem = Some(s);
        }
    }
    (subsystem == Some("module") && !name.is_empty() && !name.contains('/')).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_module_add_names_a_module() {
        let add = b"add@/module/tcp_dctcp\0ACTION=add\0DEVPATH=/module/tcp_dctcp\0SUBSYSTEM=module\0SEQNUM=1742\0";
        assert_eq!(loaded_module(add).as_deref(), Some("tcp_dctcp"));
        let remove = b"remove@/module/tcp_dctcp\0ACTION=remove\0DEVPATH=/module/tcp_dctcp\0SUBSYSTEM=module\0SEQNUM=1743\0";
        assert_eq!(loaded_module(remove), None);
        let param = b"add@/module/tcp_dctcp/parameters\0ACTION=add\0SUBSYSTEM=module\0";
        assert_eq!(loaded_module(param), None);
        let device = b"add@/devices/virtual/net/lo\0ACTION=add\0SUBSYSTEM=net\0";
        assert_eq!(loaded_module(device), None);
        assert_eq!(loaded_module(b""), None);
    }
}
