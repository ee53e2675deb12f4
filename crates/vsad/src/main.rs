fn main() {
    std::process::exit(vsad::main_with(std::env::args()));
}
