//! etcdsnap: placeholder entry point; replaced by the real binary.

fn main() {
    eprintln!("not built yet");
    std::process::exit(1);
}
