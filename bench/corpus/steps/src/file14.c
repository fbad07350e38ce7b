/* Generated source 14 of the steps context. */
int f14(int x) { return x * 14 + 1; }
