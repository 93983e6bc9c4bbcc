//! `cargo xtask demo`: a narrated live patch, applied, proven and reverted.

use std::{
    process::{
        Command,
        Stdio, //
    },
    time::{
        Duration,
        Instant, //
    },
};

use crate::harness::{
    MODULE_DIR,
    insmod, //
};

fn step(n: u32, text: &str) {
    println!("\n==== kmend demo, step {n}: {text}");
}

fn show(args: &[&str]) {
    println!("$ {}", args.join(" "));
    let _ = Command::new(args[0]).args(&args[1..]).status();
}

pub fn run() {
    step(1, "the running kernel, unpatched");
    show(&["/bin/uname", "-r"]);
    show(&["/bin/cat", "/proc/cmdline"]);

    step(2, "load the kmend core");
    if let Err(e) = insmod("kmend.ko") {
        println!("demo failed: {e}");
        return;
    }
    show(&["/bin/kmend", "status"]);

    step(3, "apply the sample patch (replaces cmdline_proc_show), no reboot");
    println!("(a signed-feed artifact: checked against this kernel's build id, then");
    println!(" the kernel verifies each target's address and code fingerprint)");
    show(&["/bin/kmend", "apply", &format!("{MODULE_DIR}/kmend_sample.kmpatch")]);
    show(&["/bin/kmend", "status"]);
    show(&["/bin/cat", "/proc/cmdline"]);

    step(4, "prove it with eBPF: the replacement runs, the old body does not");
    println!("$ kmend verify kmend_sample --window 3s   (while /proc/cmdline is read)");
    if let Ok(child) = Command::new("/bin/kmend")
        .args(["verify", "kmend_sample", "--window", "3s"])
        .stdout(Stdio::inherit())
        .spawn()
    {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            let _ = std::fs::read_to_string("/proc/cmdline");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait_with_output();
    }

    step(5, "revert: the original code runs again");
    show(&["/bin/kmend", "revert", "kmend_sample"]);
    show(&["/bin/cat", "/proc/cmdline"]);
    show(&["/bin/kmend", "status"]);
    println!("\n==== kmend demo: done");
}
