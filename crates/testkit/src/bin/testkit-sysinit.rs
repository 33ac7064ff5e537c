//! `testkit-sysinit BASE`: boots the systemd machine prepared in BASE (see
//! `portswap_testkit::systemd`). Test support only.

fn main() {
    portswap_testkit::systemd::init_main()
}
