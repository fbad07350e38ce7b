/* Generated source 18 of the steps context. */
int f18(int x) { return x * 18 + 1; }
