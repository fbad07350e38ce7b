/* Generated source 31 of the steps context. */
int f31(int x) { return x * 31 + 1; }
