/* Generated source 27 of the steps context. */
int f27(int x) { return x * 27 + 1; }
