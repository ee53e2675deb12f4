fn main() {
    // Before anything starts a thread (tests enter `main_with` from a
    // libtest thread, and keep glibc's default arenas).
    vsad::memory::limit_arenas();
    std::process::exit(vsad::main_with(std::env::args()));
}
