/* Generated source 9 of the steps context. */
int f9(int x) { return x * 9 + 1; }
