fn main(){portswap::x()}
