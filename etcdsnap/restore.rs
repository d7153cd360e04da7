//! `etcdsnap restore`: from a snapshot back to a running etcd (placeholder, filled in below).

pub fn main(_args: &[String]) -> i32 {
    eprintln!("etcdsnap restore: not implemented yet");
    2
}
